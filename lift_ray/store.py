"""Document and adapter store behind a URI (a local path today; fsspec URIs use the same code).

Layout under the root::

    docs/<doc_id>/document.txt                     normalised text (ICL and LIFT+ICL need it)
    docs/<doc_id>/adapters/<variant>/<weights>     safetensors (+ kind config, e.g. peft's files)
    docs/<doc_id>/adapters/<variant>/manifest.json written last
    docs/<doc_id>/aux_qa/<generator key>.json      auxiliary QA pairs (a cache shared by all workers)
    docs/<doc_id>/retrieval/<index key>/...        BM25 index of the document's chunks (rag modes);
                                                   its chunks.json is written last

An adapter is visible iff its ``manifest.json`` exists, and a document is listed iff it has a
visible adapter. Because the manifest is written last (and removed first on delete or retrain), a
reader never sees a half-written entry; the rule needs no rename, so it also holds on object stores.
On a local filesystem each file is additionally written to a temporary name and renamed into place.
An absorb writes ``document.txt`` (one write; the id is its hash, so it never changes) and the
retrieval index before it trains: the modes without an adapter (icl, rag) answer from them while the
adapter is being trained, before the document is listed.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
import uuid
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lift_ray.text import atomic_write


FORMAT_VERSION = 1
MANIFEST = "manifest.json"
DOCUMENT = "document.txt"
RETRIEVAL_MARKER = "chunks.json"  # lift_ray.retrieval.CHUNKS_FILE: written last
_DOC_ID = re.compile(r"^[0-9a-f]{32}$")
_VARIANT = re.compile(r"^[a-z][a-z0-9_]*-[0-9a-f]{12}$")
_CACHE_KEY = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")


class StoreError(ValueError):
    """Unknown or invalid id, or an unreadable entry."""


class DocumentNotFound(StoreError):
    """The store holds nothing (no adapter; for :meth:`AdapterStore.text`, no text) for this document id."""


class AdapterNotFound(StoreError):
    """The document has no adapter of the named variant."""


class AdapterNotReady(StoreError):
    """The document's text is stored but its absorb has not published an adapter yet."""


class KnowledgeCheck(BaseModel):
    """How well the adapter knows its auxiliary QA pairs, measured teacher-forced (packed forwards, no generation)."""

    epoch: int = Field(description="Epochs trained when the check ran.")
    answer_accuracy: float = Field(
        description="Share of pairs whose every answer token (and the end of turn) is the greedy next token: "
        "the pairs greedy decoding would answer exactly."
    )
    token_accuracy: float = Field(description="Share of answer tokens that are the greedy next token.")
    loss: float = Field(description="Mean cross-entropy over the answer tokens.")
    pairs: int
    tokens: int = Field(description="Answer tokens checked.")
    seconds: float
    forwarded: int | None = Field(
        None, description="Pairs forwarded after the epoch. Fewer than pairs: the others counted as known from the "
        "epoch's own training forwards (train.check_reuses_training) and answer_accuracy is an upper bound, below "
        "stop_accuracy. None: a check before that option, which forwarded every pair."
    )

    @property
    def known_text(self) -> str:
        """The share known as shown to a user: "91%", or "≤91%" where it is an upper bound (see forwarded)."""
        bound = "≤" if self.forwarded is not None and self.forwarded < self.pairs else ""
        return f"{bound}{self.answer_accuracy:.0%}"


class EpochRecord(BaseModel):
    epoch: int = Field(description="1-based, counted over the whole schedule.")
    stage: str
    samples: int
    steps: int
    loss: float = Field(description="Mean target loss of the epoch's steps.")
    seconds: float = Field(description="Training time of the epoch, the check included.")
    check: KnowledgeCheck | None = None


class TrainMetrics(BaseModel):
    """What one training run did; kept in the manifest (the loop in :mod:`lift_ray.train` fills it)."""

    steps: int = Field(description="Optimiser updates.")
    epochs: int = Field(description="Epochs trained.")
    samples: int
    target_tokens: int = Field(description="Tokens with a loss, over all epochs.")
    sample_tokens: int = Field(description="Tokens of the samples as written, over all epochs.")
    computed_tokens: int = Field(description="Tokens actually run through the model (after prefix sharing).")
    seconds: float
    tokens_per_second: float = Field(description="sample_tokens / seconds: throughput on the samples.")
    epoch_losses: list[float] = Field(description="Mean target loss per epoch.")
    # Added with the stop rule; manifests written before it read back with these defaults.
    max_epochs: int | None = Field(None, description="Epochs the schedule allowed.")
    stop_reason: str | None = Field(
        None, description="'known' (the knowledge check passed), 'max_epochs', or None (written before the stop rule)."
    )
    epoch_log: list[EpochRecord] = Field(default_factory=list, description="Per epoch: stage, loss, time, check.")


class BaseModelRef(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    model_id: str
    weights_hash: str
    num_params: int
    max_positions: int


class Manifest(BaseModel):
    """One adapter of one document. Versioned: :func:`parse_manifest` reads FORMAT_VERSION and refuses
    any other version with a clear error (no older version exists yet; a format change adds its
    migration there)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    format_version: int = FORMAT_VERSION
    doc_id: str
    variant: str
    adapter_kind: str
    base_model: BaseModelRef
    adapter_config: dict[str, Any]
    config_hash: str
    config: dict[str, Any] = Field(description="Resolved segments/train/adapter settings used for training.")
    context_window: int
    num_tokens: int = Field(description="Tokens of the document.")
    num_samples: int
    num_qa_pairs: int = Field(0, description="Auxiliary QA pairs trained on (paper §3.3).")
    training: TrainMetrics
    training_stages: list[TrainMetrics] = Field(
        default_factory=list,
        description="Manifests written before the stop rule: metrics per stage. Newer ones leave it empty and "
        "keep one record per epoch (stage, loss, knowledge check) in training.epoch_log.",
    )
    files: dict[str, str] = Field(description="File name -> sha256 of every file of the adapter.")
    alias: str | None = Field(None, description="The source's own id for the document (bulk input id column or file name).")
    title: str | None = Field(None, description="The source's title for the document, if it had one.")
    created_at: str
    lift_ray_version: str


def parse_manifest(raw: str | bytes, where: str) -> Manifest:
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise StoreError(f"{where}: manifest is not JSON ({exc})") from None
    version = data.get("format_version") if isinstance(data, dict) else None
    if version != FORMAT_VERSION:
        raise StoreError(f"{where}: manifest format_version {version!r} is not supported (expected {FORMAT_VERSION})")
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        raise StoreError(f"{where}: invalid manifest: {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}") from None


def doc_id_for(text: str) -> str:
    """Content hash of a document's text, already in normal form (:func:`lift_ray.text.normalize_text`).

    Documents are normalised once where they enter (:mod:`lift_ray.text`); hashing here again would
    hide a caller that stores or trains on another form than it hashed.
    """
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def variant_id(cfg, model_id: str, weights_hash: str) -> str:
    """The adapter variant a resolved config trains on a base model: ``<kind>-<12 hex>``.

    The one place that says what makes two adapters of a document different (adapter kind, base
    model and its weights, every training setting, the QA generator's code revision), used by
    absorb, bulk and NIAH alike.
    """
    from lift_ray.aux_qa import generator_revision  # lazy: the store itself needs no torch

    key = [cfg.adapter.kind, model_id, weights_hash, cfg.training_hash()]
    revision = generator_revision(cfg.aux_qa)
    if revision is not None:  # generator none: the variant of adapters absorbed before revisions counted
        key.append(revision)
    key = json.dumps(key)
    return f"{cfg.adapter.kind}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def is_doc_id(value: str) -> bool:
    """Whether ``value`` has the shape of a document id (32 lowercase hex characters)."""
    return isinstance(value, str) and bool(_DOC_ID.match(value))


def check_doc_id(doc_id: str) -> str:
    if not is_doc_id(doc_id):
        raise StoreError(f"invalid document id {doc_id!r}: expected 32 lowercase hex characters")
    return doc_id


def check_variant(variant: str) -> str:
    if not isinstance(variant, str) or not _VARIANT.match(variant):
        raise StoreError(f"invalid variant {variant!r}: expected <kind>-<12 hex characters>")
    return variant


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class AdapterStore:
    """Documents and their adapters under one URI.

    Nothing is created on disk until the first :meth:`publish`, so read-only use (and refused
    input) leaves no trace.
    """

    def __init__(self, uri: str):
        import fsspec

        self.uri = uri
        try:
            # No listings cache: other processes publish while this one lives (workers, Serve replicas).
            self.fs, root = fsspec.core.url_to_fs(uri, use_listings_cache=False)
        except (ValueError, ImportError) as exc:  # unknown protocol, or its fsspec backend (s3fs, gcsfs) missing
            raise StoreError(f"cannot open store {uri!r}: {exc}") from None
        self.root = root.rstrip("/")
        self._local = "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,))

    def __repr__(self) -> str:
        return f"AdapterStore({self.uri!r})"

    # --- paths ---------------------------------------------------------------------------------
    def _doc_dir(self, doc_id: str) -> str:
        return f"{self.root}/docs/{check_doc_id(doc_id)}"

    def _adapter_dir(self, doc_id: str, variant: str) -> str:
        return f"{self._doc_dir(doc_id)}/adapters/{check_variant(variant)}"

    # --- low-level io --------------------------------------------------------------------------
    def _write_bytes(self, path: str, data: bytes) -> None:
        if self._local:
            atomic_write(path, data)
        else:
            self.fs.pipe_file(path, data)

    def _put_file(self, local: Path, path: str) -> None:
        if self._local:
            self._write_bytes(path, Path(local).read_bytes())
        else:
            self.fs.put_file(str(local), path)

    def _read_text(self, path: str) -> str:
        with self.fs.open(path, "rb") as fh:
            return fh.read().decode("utf-8")

    # --- queries -------------------------------------------------------------------------------
    def variants(self, doc_id: str) -> list[str]:
        """Visible variants of a document (those with a manifest)."""
        base = f"{self._doc_dir(doc_id)}/adapters"
        try:
            names = self.fs.ls(base, detail=False)
        except FileNotFoundError:
            return []
        out = []
        for name in names:
            variant = name.rstrip("/").rsplit("/", 1)[-1]
            if _VARIANT.match(variant) and self.fs.exists(f"{base}/{variant}/{MANIFEST}"):
                out.append(variant)
        return sorted(out)

    def has(self, doc_id: str, variant: str) -> bool:
        return self.fs.exists(f"{self._adapter_dir(doc_id, variant)}/{MANIFEST}")

    def manifest(self, doc_id: str, variant: str) -> Manifest:
        path = f"{self._adapter_dir(doc_id, variant)}/{MANIFEST}"
        try:
            raw = self._read_text(path)
        except FileNotFoundError:
            raise AdapterNotFound(f"document {doc_id} has no adapter {variant} in {self.uri}") from None
        return parse_manifest(raw, f"{doc_id}/{variant}")

    def manifests(self, doc_id: str) -> list[Manifest]:
        return [self.manifest(doc_id, v) for v in self.variants(doc_id)]

    def latest_manifest(self, doc_id: str, variant: str | None = None) -> Manifest:
        """The named variant, or the most recently created one. Raises StoreError if none."""
        if variant is not None:
            return self.manifest(doc_id, variant)
        found = self.manifests(doc_id)
        if not found:
            raise DocumentNotFound(f"unknown document id {doc_id} in store {self.uri}")
        return max(found, key=lambda m: m.created_at)

    def has_document(self, doc_id: str) -> bool:
        """Whether the document's text is stored: from the start of its first absorb, adapter or not."""
        return self.fs.exists(f"{self._doc_dir(doc_id)}/{DOCUMENT}")

    def text(self, doc_id: str) -> str:
        """The document's normalised text (there from the start of its first absorb)."""
        try:
            return self._read_text(f"{self._doc_dir(doc_id)}/{DOCUMENT}")
        except FileNotFoundError:
            raise DocumentNotFound(f"unknown document id {doc_id} in store {self.uri}") from None

    def list_docs(self, *, pending: bool = False) -> list[dict[str, Any]]:
        """One row per visible document: id, variants, token count, alias and title from the source, created time.

        With ``pending``, also a row (``variants`` empty, ``status`` "no_adapter") per document whose text is
        stored and no adapter published yet: absorbing now (here or in another process), or an absorb that
        stopped. icl and rag answer those already. Rows of absorbed documents have ``status`` "absorbed".
        """
        try:
            entries = self.fs.ls(f"{self.root}/docs", detail=False)
        except FileNotFoundError:
            return []
        rows = []
        for entry in sorted(entries):
            doc_id = entry.rstrip("/").rsplit("/", 1)[-1]
            if _DOC_ID.match(doc_id) and (row := self.document_row(doc_id, pending=pending)) is not None:
                rows.append(row)
        return rows

    def document_row(self, doc_id: str, *, pending: bool = False) -> dict[str, Any] | None:
        """The document's :meth:`list_docs` row, or None where it lists none (no adapter, unless ``pending``)."""
        manifests = self.manifests(doc_id)
        if manifests:
            return {
                "doc_id": doc_id,
                "status": "absorbed",
                "variants": [m.variant for m in manifests],
                "num_tokens": manifests[0].num_tokens,
                "alias": next((m.alias for m in manifests if m.alias), None),
                "title": next((m.title for m in manifests if m.title), None),
                "created_at": min(m.created_at for m in manifests),
            }
        if pending and self.has_document(doc_id):
            return {"doc_id": doc_id, "status": "no_adapter", "variants": [], "num_tokens": None,
                    "alias": None, "title": None, "created_at": self._stored_at(doc_id)}
        return None

    def _stored_at(self, doc_id: str) -> str | None:
        """When the document's text was stored (ISO, UTC), where the filesystem says."""
        try:
            modified = self.fs.modified(f"{self._doc_dir(doc_id)}/{DOCUMENT}")
        except (NotImplementedError, OSError):
            return None
        if modified.tzinfo is None:  # fsspec's local filesystem gives UTC without a zone
            modified = modified.replace(tzinfo=_dt.timezone.utc)
        return modified.astimezone(_dt.timezone.utc).isoformat(timespec="seconds")

    def adapter_dir(
        self, doc_id: str, variant: str, scratch: Path | None = None, manifest: Manifest | None = None
    ) -> Path:
        """A local directory with the adapter's files, verified against the manifest's hashes.

        Args:
            scratch: where a remote store's files are fetched to (required for remote stores).
            manifest: the entry's manifest if already read (it is read otherwise).
        """
        manifest = manifest if manifest is not None else self.manifest(doc_id, variant)
        remote = self._adapter_dir(doc_id, variant)
        if self._local:
            local = Path(remote)
        else:
            if scratch is None:
                raise StoreError("a scratch directory is needed to fetch a remote adapter")
            local = Path(scratch) / doc_id / variant
            local.mkdir(parents=True, exist_ok=True)
            for name in manifest.files:
                self.fs.get_file(f"{remote}/{name}", str(local / name))
        for name, digest in manifest.files.items():
            path = local / name
            if not path.is_file() or sha256_file(path) != digest:
                raise StoreError(f"adapter file {doc_id}/{variant}/{name} is missing or corrupted (hash mismatch)")
        return local

    def aux_qa(self, doc_id: str, key: str) -> str | None:
        """The auxiliary QA report kept for ``doc_id`` under generator key ``key``, if any (a cache)."""
        try:
            return self._read_text(self._aux_qa_path(doc_id, key))
        except FileNotFoundError:
            return None

    def _aux_qa_path(self, doc_id: str, key: str) -> str:
        if not _CACHE_KEY.match(key):
            raise StoreError(f"invalid auxiliary QA key {key!r}")
        return f"{self._doc_dir(doc_id)}/aux_qa/{key}.json"

    def retrieval_index(self, doc_id: str, key: str) -> dict[str, bytes] | None:
        """The files of a document's retrieval index (:mod:`lift_ray.retrieval`), or None if not built yet."""
        base = self._retrieval_dir(doc_id, key)
        if not self.fs.exists(f"{base}/{RETRIEVAL_MARKER}"):
            return None
        files = {}
        for path in self.fs.ls(base, detail=False):
            name = path.rstrip("/").rsplit("/", 1)[-1]
            if _CACHE_KEY.match(name):
                with self.fs.open(f"{base}/{name}", "rb") as fh:
                    files[name] = fh.read()
        return files

    def _retrieval_dir(self, doc_id: str, key: str) -> str:
        if not _CACHE_KEY.match(key):
            raise StoreError(f"invalid retrieval index key {key!r}")
        return f"{self._doc_dir(doc_id)}/retrieval/{key}"

    # --- writes --------------------------------------------------------------------------------
    def put_retrieval_index(self, doc_id: str, key: str, files: dict[str, bytes]) -> None:
        """Keep a document's retrieval index beside it; the marker file goes last, so readers never see part of one."""
        if RETRIEVAL_MARKER not in files or not all(_CACHE_KEY.match(name) for name in files):
            raise StoreError(f"a retrieval index needs {RETRIEVAL_MARKER} and plain file names, got {sorted(files)}")
        base = self._retrieval_dir(doc_id, key)
        for name, data in sorted(files.items(), key=lambda item: item[0] == RETRIEVAL_MARKER):
            self._write_bytes(f"{base}/{name}", data)

    def put_document(self, doc_id: str, text: str) -> None:
        """Keep the document's text (once: the id is its hash). Readable by icl and rag from now on;
        listed once an adapter is published."""
        doc_id = check_doc_id(doc_id)
        if doc_id_for(text) != doc_id:
            raise StoreError("text does not hash to the doc_id")
        path = f"{self._doc_dir(doc_id)}/{DOCUMENT}"
        if not self.fs.exists(path):
            self._write_bytes(path, text.encode("utf-8"))

    def put_aux_qa(self, doc_id: str, key: str, payload: str) -> None:
        """Keep a document's auxiliary QA report (written before training; invisible until a manifest exists)."""
        self._write_bytes(self._aux_qa_path(doc_id, key), payload.encode("utf-8"))

    def check_readable(self) -> None:
        """Fail now, with StoreError, if a local store's root is something other than a directory.

        A root that does not exist yet is an empty store; remote stores are checked on first read.
        """
        if self._local and Path(self.root).exists() and not Path(self.root).is_dir():
            raise StoreError(f"store {self.uri} is not a directory")

    def check_writable(self) -> None:
        """Fail now, with StoreError, if this store cannot be written (before hours of training do).

        A local store is checked without creating anything; a remote one by writing and deleting a
        probe object, the only test an object store answers truthfully.
        """
        if self._local:
            existing = Path(self.root)
            while not existing.exists() and existing != existing.parent:
                existing = existing.parent
            if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
                raise StoreError(f"store {self.uri} is not writable ({existing} is not a writable directory)")
            return
        probe = f"{self.root}/.lift-ray-probe-{uuid.uuid4().hex}"
        try:
            self.fs.pipe_file(probe, b"lift-ray write probe")
            self.fs.rm(probe)
        except Exception as exc:  # missing bucket, no credentials, endpoint down: botocore/gcsfs raise many kinds
            raise StoreError(f"store {self.uri} is not reachable or not writable: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}") from None

    def put_run_summary(self, run_id: str, payload: bytes) -> str:
        """Keep a bulk run's summary beside the documents (``runs/<run_id>.json``); returns its path."""
        if not re.match(r"^[0-9A-Za-z_.-]+$", run_id):
            raise StoreError(f"invalid run id {run_id!r}")
        path = f"{self.root}/runs/{run_id}.json"
        self._write_bytes(path, payload)
        return path if self._local else self.fs.unstrip_protocol(path)

    def publish(self, manifest: Manifest, text: str, files_dir: Path) -> None:
        """Upload text and adapter files, then the manifest (which makes the entry visible)."""
        doc_id, variant = check_doc_id(manifest.doc_id), check_variant(manifest.variant)
        if doc_id_for(text) != doc_id:
            raise StoreError("text does not hash to the manifest's doc_id")
        adapter_dir = self._adapter_dir(doc_id, variant)
        manifest_path = f"{adapter_dir}/{MANIFEST}"
        if self.fs.exists(manifest_path):  # retrain: hide the old entry before touching its files
            self.fs.rm(manifest_path)
        self.put_document(doc_id, text)
        for name in manifest.files:
            self._put_file(Path(files_dir) / name, f"{adapter_dir}/{name}")
        self._write_bytes(manifest_path, manifest.model_dump_json(indent=2).encode("utf-8"))

    def delete(self, doc_id: str, variant: str | None = None) -> list[str]:
        """Delete one variant, or the whole document; manifests go first. Returns the variants removed.

        A document with no adapter (its absorb is running, or failed) is deleted with its text; an
        absorb still running publishes it again when it ends.
        """
        variants = [check_variant(variant)] if variant else self.variants(doc_id)
        if not variants:
            if variant is None and self.has_document(doc_id):
                self.fs.rm(self._doc_dir(doc_id), recursive=True)
                return []
            raise DocumentNotFound(f"unknown document id {doc_id} in store {self.uri}")
        for v in variants:
            if not self.has(doc_id, v):
                raise AdapterNotFound(f"document {doc_id} has no adapter {v} in {self.uri}")
        for v in variants:
            self.fs.rm(f"{self._adapter_dir(doc_id, v)}/{MANIFEST}")
            self.fs.rm(self._adapter_dir(doc_id, v), recursive=True)
        if not self.variants(doc_id):
            self.fs.rm(self._doc_dir(doc_id), recursive=True)
        return variants
