"""The adapter contract every adapter kind implements (LoRA now, Gated Memory beside it).

Training and inference only talk to an :class:`AdapterHandle`; they never branch on the kind.
A kind registers a class with ``attach(model, cfg) -> AdapterHandle`` in
:data:`lift_ray.adapters.ADAPTERS`.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import ClassVar, ContextManager, Protocol, runtime_checkable

import torch


class AdapterError(ValueError):
    """An adapter that cannot be attached or loaded (wrong base model, corrupted file, bad config)."""


@runtime_checkable
class AdapterHandle(Protocol):
    """One adapter attached to one resident base model.

    ``module`` is what forward/generate is called on (the base model itself, or a thin wrapper
    around it). After :meth:`detach` the base model is exactly what it was before attach.
    """

    kind: ClassVar[str]
    module: torch.nn.Module

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """The adapter's parameters; the only ones with requires_grad."""

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Adapter tensors only, detached copies on CPU, keyed as in the saved file."""

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load adapter tensors; raises AdapterError (and changes nothing) on missing, extra or misshaped keys."""

    def save(self, directory: Path) -> list[str]:
        """Write the weights (safetensors) and kind-specific config; return the file names written."""

    def disabled(self) -> ContextManager[None]:
        """Within the context the module computes the base model's outputs."""

    def detach(self) -> torch.nn.Module:
        """Remove the adapter; return the restored base model."""


def check_state_dict(expected: dict[str, torch.Tensor], given: dict[str, torch.Tensor], where: str) -> None:
    """Same keys, shapes and floating dtypes-or-castable, before any weight is touched."""
    missing = sorted(set(expected) - set(given))
    extra = sorted(set(given) - set(expected))
    if missing or extra:
        raise AdapterError(
            f"{where}: adapter weights do not match this base model "
            f"({len(missing)} missing, e.g. {missing[:2]}; {len(extra)} unexpected, e.g. {extra[:2]})"
        )
    for key, tensor in given.items():
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise AdapterError(
                f"{where}: tensor {key} has shape {tuple(tensor.shape)}, this base model needs "
                f"{tuple(expected[key].shape)}"
            )
        if not torch.is_floating_point(tensor) or not torch.isfinite(tensor).all():
            raise AdapterError(f"{where}: tensor {key} is not finite floating point data")


@contextlib.contextmanager
def eval_mode(module: torch.nn.Module):
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


def read_safetensors(directory: Path, name: str) -> dict[str, torch.Tensor]:
    """An adapter's weights file, or AdapterError when it is missing or corrupted (never a pickle)."""
    from safetensors.torch import load_file

    try:
        return load_file(str(Path(directory) / name))
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise AdapterError(f"cannot read {name}: {exc}") from None
