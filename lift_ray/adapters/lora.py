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
        from peft import LoraConfig, get_peft_model

        if cfg.r is None or cfg.alpha is None or cfg.target_modules is None:
            raise AdapterError("LoRA config is not resolved (r, alpha and target_modules must be set)")
        if hasattr(model, "peft_config"):
            raise AdapterError("this model already carries a peft adapter; detach it first")
        peft_cfg = LoraConfig(
            r=cfg.r,
            lora_alpha=cfg.alpha,
            lora_dropout=cfg.dropout,
            target_modules=cfg.target_modules,
            task_type="CAUSAL_LM",
        )
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
        base = self.module.unload()  # puts the original Linear modules back, without merging
        for attr in ("peft_config", "_hf_peft_config_loaded"):
            if attr in base.__dict__:
                delattr(base, attr)
        self.module = None
        return base
