"""Adapter kinds behind one contract (:class:`~lift_ray.adapters.base.AdapterHandle`)."""

from __future__ import annotations

from pathlib import Path

import torch

from lift_ray.adapters.base import AdapterError, AdapterHandle
from lift_ray.adapters.gated_memory import GatedMemoryHandle
from lift_ray.adapters.lora import LoraHandle

ADAPTERS: dict[str, type] = {"gated_memory": GatedMemoryHandle, "lora": LoraHandle}


def adapter_class(kind: str) -> type:
    try:
        return ADAPTERS[kind]
    except KeyError:
        raise AdapterError(f"unknown adapter kind {kind!r}; known: {', '.join(sorted(ADAPTERS))}") from None


def attach_adapter(model: torch.nn.Module, cfg, base_model_id: str | None = None) -> AdapterHandle:
    """Attach a fresh (untrained) adapter of ``cfg.kind`` to a loaded base model."""
    return adapter_class(cfg.kind).attach(model, cfg, base_model_id=base_model_id)


def load_adapter(model: torch.nn.Module, cfg, directory: Path, base_model_id: str | None = None) -> AdapterHandle:
    """Attach an adapter and load its saved weights; the base is untouched if the weights do not fit."""
    cls = adapter_class(cfg.kind)
    state = cls.read_weights(Path(directory))
    handle = cls.attach(model, cfg, base_model_id=base_model_id)
    try:
        handle.load_state_dict(state)
    except Exception:
        handle.detach()
        raise
    return handle


__all__ = ["ADAPTERS", "AdapterError", "AdapterHandle", "attach_adapter", "load_adapter"]
