"""LoRA (Hu et al., 2021) through peft, behind the adapter contract.

Saved with peft's own file names (``adapter_model.safetensors``, ``adapter_config.json``) so that
peft's ``PeftModel.from_pretrained`` or a LoRA server loads the directory as it is.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from pathlib import Path
from typing import ClassVar

import torch

from lift_ray.adapters.base import AdapterError, check_state_dict, read_safetensors
from lift_ray.config import LoraAdapterConfig

WEIGHTS_NAME = "adapter_model.safetensors"
CONFIG_NAME = "adapter_config.json"

# peft imports bitsandbytes whenever it is installed; on CPUs with avx512_bf16 bitsandbytes then
# warns that an optional hub kernel package is missing, although no 4-bit model is in use (and
# its 4-bit CPU path works without it).
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)


class LoraHandle:
    kind: ClassVar[str] = "lora"

    def __init__(self, peft_model, base: torch.nn.Module):
        self.module = peft_model
        self._base = base

    @classmethod
    def attach(cls, model: torch.nn.Module, cfg: LoraAdapterConfig, base_model_id: str | None = None) -> "LoraHandle":
        from peft import get_peft_model

        if hasattr(model, "peft_config"):
            raise AdapterError("this model already carries a peft adapter; detach it first")
        peft_cfg = _peft_config(cfg, model)
        try:
            with warnings.catch_warnings():
                # peft reads transformers' deprecated `is_gradient_checkpointing` property (not our call).
                warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
                peft_model = get_peft_model(model, peft_cfg)
        except ValueError as exc:
            raise AdapterError(f"cannot attach LoRA: {exc}") from None
        if base_model_id:  # peft records the local cache path; the manifest's stable id is what users pass
            peft_model.peft_config["default"].base_model_name_or_path = base_model_id
        return cls(peft_model, model)

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.module.parameters() if p.requires_grad]

    def state_dict(self) -> dict[str, torch.Tensor]:
        from peft import get_peft_model_state_dict

        # The adapter never touches embeddings; saying so skips peft's lookup of the base config.
        state = get_peft_model_state_dict(self.module, save_embedding_layers=False)
        return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        from peft import set_peft_model_state_dict

        check_state_dict(self.state_dict(), state, "LoRA")
        result = set_peft_model_state_dict(self.module, state)
        if result.unexpected_keys:
            raise AdapterError(f"LoRA: unexpected keys {result.unexpected_keys[:3]}")

    def save(self, directory: Path) -> list[str]:
        # The adapter never touches embeddings; saying so skips peft's hub lookup of the base config.
        self.module.save_pretrained(str(directory), safe_serialization=True, save_embedding_layers=False)
        return [WEIGHTS_NAME, CONFIG_NAME]

    @staticmethod
    def read_weights(directory: Path) -> dict[str, torch.Tensor]:
        return read_safetensors(directory, WEIGHTS_NAME)

    def disabled(self):
        return self.module.disable_adapter()

    def detach(self) -> torch.nn.Module:
        base = _unload(self.module)
        self.module = None
        return base


def _peft_config(cfg: LoraAdapterConfig, model: torch.nn.Module, inference: bool = False):
    from peft import LoraConfig

    if cfg.r is None or cfg.alpha is None or cfg.target_modules is None:
        raise AdapterError("LoRA config is not resolved (r, alpha and target_modules must be set)")
    target_modules, layers = cfg.target_modules, None
    if cfg.layer_share is not None and cfg.layer_share < 1.0:
        num_layers = model.config.num_hidden_layers
        first = num_layers - max(1, round(cfg.layer_share * num_layers))
        layers = list(range(first, num_layers))
        if target_modules == "all-linear":  # peft takes a layer list only with module names
            target_modules = _linear_names(model)
    return LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=target_modules,
        layers_to_transform=layers,
        task_type="CAUSAL_LM",
        inference_mode=inference,
    )


def _linear_names(model: torch.nn.Module) -> list[str]:
    """The linear layers' names, as 'all-linear' picks them (not the output head); the layer list then
    keeps those inside the chosen decoder layers."""
    head = model.get_output_embeddings()
    names = set()
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or module is head or ".lora_" in name:
            continue
        # A model already carrying adapters (the serving bank) wraps each layer: q_proj.base_layer.
        names.add(name.removesuffix(".base_layer").rsplit(".", 1)[-1])
    return sorted(names)


def _unload(peft_model) -> torch.nn.Module:
    base = peft_model.unload()  # puts the original Linear modules back, without merging
    for attr in ("peft_config", "_hf_peft_config_loaded"):
        if attr in base.__dict__:
            delattr(base, attr)
    return base


# peft's reserved adapter name for "no adapter" in a mixed batch.
BASE_ROW = "__base__"


class LoraBank:
    """Many documents' LoRA adapters resident on one base model, as peft named adapters.

    A batch whose rows belong to different documents runs in one forward through peft's mixed-adapter
    batches (``adapter_names=``, one name per row; :data:`BASE_ROW` rows compute the base model).
    peft wraps the base model on the first :meth:`add` and unwraps it when the last adapter goes, so
    an empty bank leaves the base exactly as it was.
    """

    def __init__(self, model: torch.nn.Module):
        self.base = model
        self.peft_model = None

    @property
    def module(self) -> torch.nn.Module:
        """What generate is called on: the peft model while any adapter is resident, else the base."""
        return self.peft_model if self.peft_model is not None else self.base

    @property
    def names(self) -> list[str]:
        return [] if self.peft_model is None else list(self.peft_model.peft_config)

    def add(self, name: str, cfg: LoraAdapterConfig, state: dict[str, torch.Tensor]) -> None:
        """Make ``state`` (a saved LoRA) resident under ``name``.

        Raises:
            AdapterError: the weights do not fit this base model; nothing is kept.
        """
        from peft import get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

        peft_cfg = _peft_config(cfg, self.base, inference=True)
        if hasattr(self.base, "peft_config") and self.peft_model is None:
            raise AdapterError("this model already carries a peft adapter; detach it first")
        # The new adapter's tensors are created empty (meta) and take the loaded weights as they are:
        # no random initialisation to throw away, which is most of a cold load's time.
        try:
            if self.peft_model is None:
                self.peft_model = get_peft_model(self.base, peft_cfg, adapter_name=name, low_cpu_mem_usage=True)
            else:
                self.peft_model.add_adapter(name, peft_cfg, low_cpu_mem_usage=True)
        except ValueError as exc:
            raise AdapterError(f"cannot attach LoRA: {exc}") from None
        try:
            expected = get_peft_model_state_dict(self.peft_model, adapter_name=name)
            check_state_dict(expected, state, "LoRA")
            device = next(self.base.parameters()).device
            state = {k: v.to(device=device, dtype=torch.float32) for k, v in state.items()}
            result = set_peft_model_state_dict(self.peft_model, state, adapter_name=name, low_cpu_mem_usage=True)
            if result.unexpected_keys:
                raise AdapterError(f"LoRA: unexpected keys {result.unexpected_keys[:3]}")
        except Exception:
            self.remove(name)
            raise
        self.peft_model.eval()

    def remove(self, name: str) -> None:
        if self.peft_model is None or name not in self.peft_model.peft_config:
            return
        if len(self.peft_model.peft_config) == 1:
            self.detach()
        else:
            import warnings

            with warnings.catch_warnings():  # "adapter ... was active": there is no single active one here
                warnings.simplefilter("ignore", UserWarning)
                self.peft_model.delete_adapter(name)

    def adapter_names(self, rows: list[str | None]) -> list[str]:
        return [BASE_ROW if name is None else name for name in rows]

    def detach(self) -> torch.nn.Module:
        if self.peft_model is not None:
            self.base = _unload(self.peft_model)
            self.peft_model = None
        return self.base
