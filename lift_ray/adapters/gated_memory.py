"""Gated Memory (Mao et al., LIFT, arXiv 2502.14644 v3, method section "Gated Memory"), behind the adapter contract.

Every attention head of every layer gets a memory MLP ``m`` and a scalar gate ``g``. Both read the
head's query *before* RoPE, so the memory is addressed by content, not by position:

    m(q) = W2 · SiLU(W1 · q)                   W1: D → E·D, W2: E·D → D   (paper: E = 2, no biases)
    g(q) = σ(3 · (w2 · SiLU(W1' · q) − c))     W1': D → h, w2: h → 1      (paper: h = 11, c = 1)
    o    = (1 − g(q)) · attn(q, K, V) + g(q) · m(q)

and ``o`` replaces the head's attention output in front of the frozen ``o_proj``. The paper's
offset c = 1 makes the gate σ(−3) ≈ 0.047 when w2 = 0; here c = −logit(gate_init) / 3, which is
exactly 1 for ``gate_init = σ(−3)`` and 0.98 for the default 0.05. For Llama-3-8B (32 layers × 32
heads, D = 128) that is 67.1M memory + 1.45M gate parameters, the paper's 68.6M.

The base model is neither copied nor patched: two hooks per layer do the work. A forward hook on
``q_proj`` keeps its output, the current tokens' pre-RoPE queries (so decoding with a KV cache and
4-bit ``Linear4bit`` projections need nothing special), and a forward pre-hook on ``o_proj`` swaps
the attention output for the gated mix. Both fire again when gradient checkpointing recomputes a
layer, and neither depends on the attention kernel (eager, sdpa, flash).
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import threading
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from lift_ray.adapters.base import AdapterError, check_state_dict, read_safetensors
from lift_ray.config import GatedMemoryAdapterConfig

WEIGHTS_NAME = "gated_memory.safetensors"
CONFIG_NAME = "gated_memory_config.json"


@dataclass(frozen=True)
class _Arch:
    """Where one architecture keeps what the hooks need, as attribute paths."""

    layers: str  # from the CausalLM to the list of decoder layers
    attention: str  # from a decoder layer to its attention module
    q_proj: str  # from the attention module
    o_proj: str


# Keyed by config.model_type. SmolLM and most Llama derivatives report "llama". head_dim and the
# number of query heads come from the config (see _head_shape), the same for all of these.
ARCHITECTURES: dict[str, _Arch] = {
    "llama": _Arch(layers="model.layers", attention="self_attn", q_proj="q_proj", o_proj="o_proj"),
    "mistral": _Arch(layers="model.layers", attention="self_attn", q_proj="q_proj", o_proj="o_proj"),
    "qwen2": _Arch(layers="model.layers", attention="self_attn", q_proj="q_proj", o_proj="o_proj"),
}

# Models that carry a Gated Memory now; kept outside the model so that detach leaves no attribute behind.
_ATTACHED: "weakref.WeakSet[nn.Module]" = weakref.WeakSet()


class GatedMemoryLayer(nn.Module):
    """The memories and gates of all heads of one attention layer, as per-head weight stacks.

    Args:
        num_heads (int): query heads H.
        head_dim (int): D.
        memory_hidden (int): hidden size of each memory MLP (paper: 2·D).
        gate_hidden (int): hidden size h of each gate MLP (paper: 11).
        gate_offset (float): c in the gate, fixed; c = 1 is the paper's.
        device (torch.device): where the weights live (the layer's device in the base model).
    """

    def __init__(
        self,
        num_heads: int,
        head_dim: int,
        memory_hidden: int,
        gate_hidden: int,
        gate_offset: float,
        device: torch.device,
    ):
        super().__init__()
        self.num_heads, self.head_dim, self.gate_offset = num_heads, head_dim, gate_offset
        # float32 whatever the base's dtype: a bf16 or 4-bit base would round away small updates.
        make = functools.partial(torch.empty, device=device, dtype=torch.float32)
        self.memory_in = nn.Parameter(make(num_heads, memory_hidden, head_dim))  # W1 per head
        self.memory_out = nn.Parameter(make(num_heads, head_dim, memory_hidden))  # W2 per head
        self.gate_in = nn.Parameter(make(num_heads, gate_hidden, head_dim))  # W1' per head
        self.gate_out = nn.Parameter(make(num_heads, gate_hidden))  # w2 per head
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # The untrained adapter must stay close to the base. w2 = 0 makes the gate exactly gate_init for
        # every token, and W2 = 0 makes the memory output 0 (as LoRA's B = 0), so the start is the base
        # with each head's output damped by 1 − gate_init and no random signal added. W1 and W1' get
        # nn.Linear's default range U(±1/√D), so the first gradients of W2 (∝ SiLU(W1·q)) and of w2
        # (∝ SiLU(W1'·q)) are not zero and training can move away from that point.
        bound = 1.0 / math.sqrt(self.head_dim)
        nn.init.uniform_(self.memory_in, -bound, bound)
        nn.init.uniform_(self.gate_in, -bound, bound)
        nn.init.zeros_(self.memory_out)
        nn.init.zeros_(self.gate_out)

    def forward(
        self, query: torch.Tensor, attn: torch.Tensor, forced_gate: float | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mix each head's attention output with its memory read-out.

        Args:
            query (torch.Tensor): q_proj's output before RoPE, (..., H·D).
            attn (torch.Tensor): the attention output o_proj would get, (..., H·D).
            forced_gate (float | None): use this gate value instead of g(q). Default: None.

        Returns:
            The mixed heads (..., H·D) in attn's dtype, and the gate (..., H) in float32.
        """
        q = query.float().unflatten(-1, (self.num_heads, self.head_dim))  # (B, T, H, D)
        a = attn.float().unflatten(-1, (self.num_heads, self.head_dim))  # (B, T, H, D)
        hidden = F.silu(torch.einsum("...hd,hmd->...hm", q, self.memory_in))  # (B, T, H, E·D)
        memory = torch.einsum("...hm,hdm->...hd", hidden, self.memory_out)  # (B, T, H, D)
        if forced_gate is None:
            gate_hidden = F.silu(torch.einsum("...hd,hkd->...hk", q, self.gate_in))  # (B, T, H, h)
            score = torch.einsum("...hk,hk->...h", gate_hidden, self.gate_out)  # (B, T, H)
            gate = torch.sigmoid(3.0 * (score - self.gate_offset))  # (B, T, H)
        else:
            gate = torch.full(a.shape[:-1], forced_gate, dtype=torch.float32, device=a.device)  # (B, T, H)
        g = gate.unsqueeze(-1)  # (B, T, H, 1)
        mixed = (1.0 - g) * a + g * memory  # (B, T, H, D)
        return mixed.flatten(-2).to(attn.dtype), gate  # (B, T, H·D), (B, T, H)


class GatedMemory(nn.Module):
    """One :class:`GatedMemoryLayer` per decoder layer; its state_dict is the saved adapter."""

    def __init__(self, layers: list[GatedMemoryLayer]):
        super().__init__()
        self.layers = nn.ModuleList(layers)


class _QueryStash(threading.local):
    """Each layer's query, from its q_proj to its o_proj; per thread, so concurrent forwards cannot swap them."""

    def __init__(self, num_layers: int):
        self.queries: list[torch.Tensor | None] = [None] * num_layers


def _get(obj, path: str):
    return functools.reduce(getattr, path.split("."), obj)


def _arch_of(model: nn.Module) -> _Arch:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in ARCHITECTURES:
        raise AdapterError(
            f"Gated Memory does not support architecture {model_type!r}; "
            f"supported: {', '.join(sorted(ARCHITECTURES))} (config.model_type)"
        )
    return ARCHITECTURES[model_type]


def _head_shape(config) -> tuple[int, int]:
    """(query heads, head_dim) from a transformers config."""
    num_heads = config.num_attention_heads
    return num_heads, getattr(config, "head_dim", None) or config.hidden_size // num_heads


def gate_offset(gate_init: float) -> float:
    """The c for which σ(3·(0 − c)) = gate_init, i.e. the gate of an untrained adapter (w2 = 0)."""
    return -math.log(gate_init / (1.0 - gate_init)) / 3.0


def build_memory(model: nn.Module, cfg: GatedMemoryAdapterConfig) -> GatedMemory:
    """A fresh (untrained) Gated Memory shaped for ``model``'s attention layers, on their devices.

    Raises:
        AdapterError: unsupported architecture or unexpected projection shapes.
    """
    arch = _arch_of(model)
    num_heads, head_dim = _head_shape(model.config)
    layers = []
    for i, layer in enumerate(_get(model, arch.layers)):
        attention = _get(layer, arch.attention)
        q_proj, o_proj = _base_linear(attention, arch.q_proj), _base_linear(attention, arch.o_proj)
        if q_proj.out_features != num_heads * head_dim or o_proj.in_features != num_heads * head_dim:
            raise AdapterError(
                f"layer {i}: q_proj gives {q_proj.out_features} and o_proj takes {o_proj.in_features} "
                f"features, expected {num_heads} heads × {head_dim}"
            )
        layers.append(
            GatedMemoryLayer(
                num_heads,
                head_dim,
                memory_hidden=cfg.memory_expansion * head_dim,
                gate_hidden=cfg.gate_hidden,
                gate_offset=gate_offset(cfg.gate_init),
                device=o_proj.weight.device,
            )
        )
    return GatedMemory(layers)


def _base_linear(attention: nn.Module, path: str) -> nn.Module:
    """The projection itself, also when peft has wrapped it (a LoRA resident beside a Gated Memory):
    hooks on the inner layer survive peft's wrapping and unloading."""
    module = _get(attention, path)
    return module.get_base_layer() if hasattr(module, "get_base_layer") else module


def _install_hooks(model: nn.Module, keep_query, mix) -> list[torch.utils.hooks.RemovableHandle]:
    """``keep_query(i, ...)`` after every layer's q_proj and ``mix(i, ...)`` before its o_proj."""
    arch = _arch_of(model)
    hooks = []
    for i, layer in enumerate(_get(model, arch.layers)):
        attention = _get(layer, arch.attention)
        hooks.append(_base_linear(attention, arch.q_proj).register_forward_hook(functools.partial(keep_query, i)))
        hooks.append(_base_linear(attention, arch.o_proj).register_forward_pre_hook(functools.partial(mix, i)))
    return hooks


class GatedMemoryHandle:
    """A Gated Memory attached to a base model through hooks; ``module`` is the base model itself."""

    kind: ClassVar[str] = "gated_memory"

    def __init__(self, model: nn.Module, memory: GatedMemory, cfg: GatedMemoryAdapterConfig, base_model_id: str | None):
        self.module = model
        self.memory = memory
        self._base = model
        self._cfg = cfg
        self._base_model_id = base_model_id
        self._base_requires_grad = [p.requires_grad for p in model.parameters()]
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []
        self._stash = _QueryStash(len(memory.layers))
        self._gates: list[torch.Tensor | None] = [None] * len(memory.layers)  # mean gate per layer, last forward
        self._enabled = True
        self._forced_gate: float | None = None

    @classmethod
    def attach(
        cls, model: nn.Module, cfg: GatedMemoryAdapterConfig, base_model_id: str | None = None
    ) -> "GatedMemoryHandle":
        """Add a fresh (untrained) Gated Memory to every attention layer of ``model`` and freeze the base.

        Raises:
            AdapterError: unsupported architecture, unexpected projection shapes, or already attached.
        """
        if model in _ATTACHED:
            raise AdapterError("this model already carries a Gated Memory; detach it first")
        memory = build_memory(model, cfg)
        handle = cls(model, memory, cfg, base_model_id)
        model.requires_grad_(False)
        handle._hooks = _install_hooks(model, handle._keep_query, handle._mix)
        _ATTACHED.add(model)
        return handle

    # --- hooks -----------------------------------------------------------------------------------
    def _keep_query(self, index: int, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        self._stash.queries[index] = output  # (B, T, H·D), pre-RoPE

    def _mix(self, index: int, module: nn.Module, args: tuple) -> tuple | None:
        queries = self._stash.queries
        query, queries[index] = queries[index], None  # drop the reference as soon as it is used
        if not self._enabled:
            return None
        if query is None:
            raise RuntimeError(f"Gated Memory: layer {index}'s o_proj ran without its q_proj in the same forward")
        attn, *rest = args  # (B, T, H·D)
        mixed, gate = self.memory.layers[index](query, attn, self._forced_gate)
        self._gates[index] = gate.detach().mean()
        return (mixed, *rest)

    # --- the contract ----------------------------------------------------------------------------
    def trainable_parameters(self) -> list[nn.Parameter]:
        return list(self.memory.parameters())

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().to("cpu", copy=True) for k, v in self.memory.state_dict().items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        check_state_dict(self.state_dict(), state, "Gated Memory")
        self.memory.load_state_dict(state)  # copies into the float32 parameters, casting if needed

    def save(self, directory: Path) -> list[str]:
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file(self.state_dict(), str(directory / WEIGHTS_NAME), metadata={"format": "pt"})
        first = self.memory.layers[0]
        config = {
            **self._cfg.model_dump(mode="json"),
            "base_model_name_or_path": self._base_model_id,
            "model_type": self._base.config.model_type,
            "num_layers": len(self.memory.layers),
            "num_heads": first.num_heads,
            "head_dim": first.head_dim,
        }
        (directory / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        return [WEIGHTS_NAME, CONFIG_NAME]

    @staticmethod
    def read_weights(directory: Path) -> dict[str, torch.Tensor]:
        return read_safetensors(directory, WEIGHTS_NAME)

    @contextlib.contextmanager
    def disabled(self) -> Iterator[None]:
        """The hooks pass the attention output through untouched: exactly the base model."""
        was, self._enabled = self._enabled, False
        try:
            yield
        finally:
            self._enabled = was

    @contextlib.contextmanager
    def force_gate(self, value: float) -> Iterator[None]:
        """Every gate is ``value`` within the context (0: the base's outputs, computed through the mix)."""
        was, self._forced_gate = self._forced_gate, float(value)
        try:
            yield
        finally:
            self._forced_gate = was

    def mean_gate(self) -> float | None:
        """Mean gate over layers, heads and tokens of the last forward; None before any."""
        gates = [g for g in self._gates if g is not None]
        return torch.stack(gates).mean().item() if gates else None

    def detach(self) -> nn.Module:
        """Remove the hooks and give back the base model as it was before attach (a second call is a no-op)."""
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
        if self.module is not None:
            for p, flag in zip(self._base.parameters(), self._base_requires_grad):
                p.requires_grad_(flag)
            _ATTACHED.discard(self._base)
        self._stash = _QueryStash(len(self.memory.layers))
        self.module = None
        return self._base


class GatedMemoryBank:
    """Many documents' Gated Memories resident on one base model; each batch row reads its own.

    Serving keeps up to K documents' memories on the device and answers a batch whose rows belong
    to different documents (or to none: ``icl`` rows) in one forward. The hooks are the same two per
    layer as :class:`GatedMemoryHandle`'s; the o_proj hook mixes each row with the memory that row
    names (:meth:`rows`) and passes rows without one through untouched, so those rows compute
    exactly the base model. Rows sharing a memory are mixed together, a memory used by every row
    runs on the whole batch.

    Callers serialise forwards (the engine's lock): the row assignment is one per bank.
    """

    def __init__(self, model: nn.Module):
        if model in _ATTACHED:
            raise AdapterError("this model already carries a Gated Memory; detach it first")
        _arch_of(model)
        self.model = model
        self.memories: dict[str, GatedMemory] = {}
        self._rows: list[str | None] | None = None
        self._stash = _QueryStash(len(_get(model, _arch_of(model).layers)))
        self._hooks = _install_hooks(model, self._keep_query, self._mix)
        _ATTACHED.add(model)

    def add(self, name: str, cfg: GatedMemoryAdapterConfig, state: dict[str, torch.Tensor]) -> None:
        """Make ``state`` (a saved Gated Memory) resident under ``name``.

        Raises:
            AdapterError: the weights do not fit this base model; nothing is kept.
        """
        memory = build_memory(self.model, cfg).requires_grad_(False)
        check_state_dict(memory.state_dict(), state, "Gated Memory")
        memory.load_state_dict(state)
        self.memories[name] = memory

    def remove(self, name: str) -> None:
        self.memories.pop(name, None)

    @contextlib.contextmanager
    def rows(self, names: list[str | None]) -> Iterator[None]:
        """Within the context, batch row i reads memory ``names[i]`` (None: the base model)."""
        unknown = {n for n in names if n is not None and n not in self.memories}
        if unknown:
            raise AdapterError(f"Gated Memory bank: no resident memory {sorted(unknown)}")
        was, self._rows = self._rows, list(names)
        try:
            yield
        finally:
            self._rows = was

    def _keep_query(self, index: int, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        self._stash.queries[index] = output  # (B, T, H·D), pre-RoPE

    def _mix(self, index: int, module: nn.Module, args: tuple) -> tuple | None:
        queries = self._stash.queries
        query, queries[index] = queries[index], None
        rows = self._rows
        if rows is None or all(name is None for name in rows):
            return None
        attn, *rest = args  # (B, T, H·D)
        if attn.shape[0] != len(rows):
            raise RuntimeError(f"Gated Memory bank: batch of {attn.shape[0]} rows, {len(rows)} row assignments")
        if all(name == rows[0] for name in rows):
            mixed, _ = self.memories[rows[0]].layers[index](query, attn)
            return (mixed, *rest)
        out = attn.clone()
        for name in dict.fromkeys(n for n in rows if n is not None):
            idx = torch.tensor([i for i, n in enumerate(rows) if n == name], device=attn.device)
            mixed, _ = self.memories[name].layers[index](query.index_select(0, idx), attn.index_select(0, idx))
            out.index_copy_(0, idx, mixed)
        return (out, *rest)

    def detach(self) -> nn.Module:
        """Remove the hooks and every memory; the base model is as before (a second call is a no-op)."""
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
        self.memories.clear()
        _ATTACHED.discard(self.model)
        return self.model
