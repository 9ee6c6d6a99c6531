"""What a long-lived engine keeps between questions: manifests, and up to K documents' adapters.

A server answers many documents with one base model. :class:`ResidentAdapters` keeps the adapters
of the K most recently used documents on the device (LoRA as peft named adapters, Gated Memory as
memories of one :class:`~lift_ray.adapters.gated_memory.GatedMemoryBank`), so switching documents
touches neither the store nor the disk, and a batch can mix documents. An adapter in use by a
running generation is pinned: eviction waits until it is released. :class:`ManifestCache` keeps
each (document, variant) manifest for a few seconds, so a busy document costs no store reads, while
a document that another process publishes or deletes becomes visible or invisible within that time.

No locking here: :class:`lift_ray.infer.LiftEngine` serialises every call under its lock.
"""

from __future__ import annotations

import collections
import dataclasses
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch

from lift_ray.adapters import adapter_class
from lift_ray.adapters.base import AdapterError
from lift_ray.adapters.gated_memory import GatedMemoryBank
from lift_ray.adapters.lora import LoraBank
from lift_ray.store import AdapterStore, Manifest, StoreError

AdapterKey = tuple[str, str]  # (doc_id, variant)


class ManifestCache:
    """Manifests per (document, variant) and each document's latest variant, re-read after ``ttl`` seconds.

    Args:
        store: the store the manifests come from.
        ttl (float): seconds a read stays fresh; 0 re-reads on every call. Default: 2.0.
        clock: a monotonic clock (tests pass a fake one).
    """

    def __init__(self, store: AdapterStore, ttl: float = 2.0, clock: Callable[[], float] = time.monotonic):
        self.store = store
        self.ttl = ttl
        self._clock = clock
        self._manifests: dict[AdapterKey, tuple[Manifest, float]] = {}
        self._latest: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

    def _fresh(self, stamp: float) -> bool:
        return self._clock() - stamp < self.ttl

    def get(self, doc_id: str, variant: str | None = None) -> Manifest:
        """The named variant's manifest, or the document's latest one.

        Raises:
            StoreError: unknown document or variant (also one deleted since it was cached).
        """
        with self._lock:
            if variant is None and (hit := self._latest.get(doc_id)) and self._fresh(hit[1]):
                variant = hit[0]
            if variant is not None and (cached := self._manifests.get((doc_id, variant))) and self._fresh(cached[1]):
                return cached[0]
        try:
            manifest = self.store.latest_manifest(doc_id, variant)
        except StoreError:
            self.forget(doc_id)
            raise
        now = self._clock()
        with self._lock:
            self._manifests[(doc_id, manifest.variant)] = (manifest, now)
            if variant is None:
                self._latest[doc_id] = (manifest.variant, now)
        return manifest

    def forget(self, doc_id: str) -> None:
        """Drop everything cached about ``doc_id`` (the next :meth:`get` reads the store)."""
        with self._lock:
            self._latest.pop(doc_id, None)
            for key in [k for k in self._manifests if k[0] == doc_id]:
                del self._manifests[key]


def fetch_adapter(store: AdapterStore, manifest: Manifest):
    """The adapter's config and weights (on CPU), its files checked against the manifest's hashes.

    A remote store's files go through a temporary directory that is removed again.

    Raises:
        StoreError: missing or corrupted files. AdapterError: unreadable weights.
    """
    from lift_ray.config import parse_adapter_config

    cfg = parse_adapter_config(manifest.adapter_config)
    with tempfile.TemporaryDirectory(prefix="lift-ray-fetch-") as scratch:
        directory = store.adapter_dir(manifest.doc_id, manifest.variant, scratch=Path(scratch), manifest=manifest)
        state = adapter_class(cfg.kind).read_weights(directory)
    return cfg, state


@dataclasses.dataclass
class ResidentAdapter:
    """One document's adapter on the device."""

    key: AdapterKey
    kind: str
    name: str  # its name in the LoRA or Gated Memory bank
    files: dict[str, str]  # the manifest's file hashes when loaded: a republished adapter differs
    pins: int = 0
    evicted: bool = False  # asked to go while pinned: goes on the last release


class ResidentAdapters:
    """Up to ``capacity`` adapters resident on one base model, least recently used evicted first.

    Pinned adapters (in use by a generation) are never evicted; while more than ``capacity`` are
    pinned the set grows and shrinks back as they are released.
    """

    def __init__(self, model: torch.nn.Module, capacity: int):
        if capacity < 1:
            raise ValueError(f"adapter cache capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self.base = model
        self.lora = LoraBank(model)
        self.gated: GatedMemoryBank | None = None
        self.entries: collections.OrderedDict[AdapterKey, ResidentAdapter] = collections.OrderedDict()
        self.loads = 0  # adapters installed since start (a test and the benchmark read it)

    # --- lookup and install -------------------------------------------------------------------
    def get(self, manifest: Manifest) -> ResidentAdapter | None:
        """The resident adapter for this manifest (marked most recently used), or None.

        An entry loaded from other files (the variant was retrained and republished) is dropped.
        """
        key = (manifest.doc_id, manifest.variant)
        entry = self.entries.get(key)
        if entry is None:
            return None
        if entry.files != manifest.files:
            self._orphan(entry)
            return None
        entry.evicted = False  # wanted again before its deferred eviction happened
        self.entries.move_to_end(key)
        return entry

    def install(self, manifest: Manifest, cfg, state: dict[str, torch.Tensor], pin: bool = False) -> ResidentAdapter:
        """Put a fetched adapter on the device (pinned if ``pin``), evicting the least recently used
        unpinned ones beyond capacity."""
        key = (manifest.doc_id, manifest.variant)
        if key in self.entries:
            self._orphan(self.entries[key])
        name = f"a{self.loads}_{manifest.variant.replace('-', '_')}"  # unique: a replaced entry may still be pinned
        if cfg.kind == "lora":
            self.lora.add(name, cfg, state)
        elif cfg.kind == "gated_memory":
            if self.gated is None:
                self.gated = GatedMemoryBank(self.base)
            self.gated.add(name, cfg, state)
        else:
            raise AdapterError(f"adapter kind {cfg.kind!r} cannot be served")
        entry = ResidentAdapter(key, cfg.kind, name, dict(manifest.files), pins=int(pin))
        self.entries[key] = entry
        self.loads += 1
        self._shrink(keep=entry)
        return entry

    # --- pins and eviction --------------------------------------------------------------------
    def pin(self, entry: ResidentAdapter) -> None:
        entry.pins += 1

    def release(self, entry: ResidentAdapter) -> None:
        entry.pins -= 1
        if entry.pins == 0 and entry.evicted:
            self._remove(entry)
        self._shrink()

    def evict(self, key: AdapterKey) -> bool:
        """Remove an adapter now, or when its last user releases it. False if it was not resident."""
        entry = self.entries.get(key)
        if entry is None:
            return False
        if entry.pins:
            entry.evicted = True
        else:
            self._remove(entry)
        return True

    def _orphan(self, entry: ResidentAdapter) -> None:
        """Take a stale entry out of the index; its weights go now, or on its last release."""
        if self.entries.get(entry.key) is entry:
            del self.entries[entry.key]
        entry.evicted = True
        if not entry.pins:
            self._remove(entry)

    def _remove(self, entry: ResidentAdapter) -> None:
        if self.entries.get(entry.key) is entry:
            del self.entries[entry.key]
        if entry.kind == "lora":
            self.lora.remove(entry.name)
        elif self.gated is not None:
            self.gated.remove(entry.name)

    def _shrink(self, keep: ResidentAdapter | None = None) -> None:
        for entry in [e for e in self.entries.values() if not e.pins and e is not keep]:
            if len(self.entries) <= self.capacity:
                break
            self._remove(entry)

    def clear(self) -> torch.nn.Module:
        """Remove every adapter (pinned ones too: only call with no generation running); returns the base."""
        self.entries.clear()
        self.base = self.lora.detach()
        if self.gated is not None:
            self.gated.detach()
            self.gated = None
        return self.base

    # --- running a batch ----------------------------------------------------------------------
    @property
    def module(self) -> torch.nn.Module:
        """What generate runs on: the peft model while any LoRA is resident, else the base model."""
        return self.lora.module

    def routing(self, rows: list[ResidentAdapter | None]):
        """A context for one forward/generate over ``rows`` (None: the base model), and its extra
        generate kwargs (peft's per-row ``adapter_names``)."""
        import contextlib

        lora_rows = [e.name if e is not None and e.kind == "lora" else None for e in rows]
        gated_rows = [e.name if e is not None and e.kind == "gated_memory" else None for e in rows]
        kwargs = {"adapter_names": self.lora.adapter_names(lora_rows)} if self.lora.peft_model is not None else {}
        context = self.gated.rows(gated_rows) if self.gated is not None else contextlib.nullcontext()
        return context, kwargs
