"""The adapter contract's invariants, for every registered kind."""

import pytest
import torch

from lift_ray.adapters import ADAPTERS, AdapterError, attach_adapter, load_adapter
from lift_ray.config import GatedMemoryAdapterConfig, LoraAdapterConfig
from lift_ray.segments import pack_shared_prefix, Sample, IGNORE_INDEX
from lift_ray.train import packed_loss

CONFIGS = {
    "gated_memory": GatedMemoryAdapterConfig(),
    "lora": LoraAdapterConfig(r=4, alpha=8, target_modules="all-linear"),
}


@pytest.fixture(params=sorted(ADAPTERS))
def adapter_cfg(request):
    return CONFIGS[request.param]


def _logits(module, ids):
    with torch.no_grad():
        return module(input_ids=ids).logits


def _perturb(handle):
    """Give the adapter non-identity weights (LoRA B and Gated Memory W2, w2 start at zero, which would hide bugs)."""
    with torch.no_grad():
        for p in handle.trainable_parameters():
            p.add_(torch.randn_like(p) * 0.1)


IDS = torch.tensor([[5, 17, 42, 99, 7, 3, 64, 12]])


def test_detach_restores_the_base_bit_for_bit(tiny_loaded, adapter_cfg):
    before = {k: v.clone() for k, v in tiny_loaded.model.state_dict().items()}
    base_logits = _logits(tiny_loaded.model, IDS)
    handle = attach_adapter(tiny_loaded.model, adapter_cfg)
    _perturb(handle)
    assert not torch.allclose(_logits(handle.module, IDS), base_logits)
    model = handle.detach()
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert torch.equal(_logits(model, IDS), base_logits)
    assert not any(p.requires_grad for p in model.parameters())


def test_disabled_gives_base_outputs(tiny_loaded, adapter_cfg):
    base_logits = _logits(tiny_loaded.model, IDS)
    handle = attach_adapter(tiny_loaded.model, adapter_cfg)
    _perturb(handle)
    with handle.disabled():
        assert torch.allclose(_logits(handle.module, IDS), base_logits, atol=1e-6)
    assert not torch.allclose(_logits(handle.module, IDS), base_logits)
    tiny_loaded.model = handle.detach()


def test_only_adapter_parameters_train(tiny_loaded, adapter_cfg):
    handle = attach_adapter(tiny_loaded.model, adapter_cfg)
    trainable = {id(p) for p in handle.trainable_parameters()}
    assert trainable
    for name, p in handle.module.named_parameters():
        assert p.requires_grad == (id(p) in trainable), name
    assert set(handle.state_dict()) and all(v.device.type == "cpu" for v in handle.state_dict().values())
    tiny_loaded.model = handle.detach()


def test_save_then_load_gives_the_same_logits(tiny_loaded, adapter_cfg, tmp_path):
    handle = attach_adapter(tiny_loaded.model, adapter_cfg)
    _perturb(handle)
    want = _logits(handle.module, IDS)
    names = handle.save(tmp_path)
    assert all((tmp_path / n).is_file() for n in names)
    assert any(n.endswith(".safetensors") for n in names)
    tiny_loaded.model = handle.detach()
    handle = load_adapter(tiny_loaded.model, adapter_cfg, tmp_path)
    assert torch.allclose(_logits(handle.module, IDS), want, atol=1e-6)
    tiny_loaded.model = handle.detach()


def test_one_training_step_changes_outputs(tiny_loaded, adapter_cfg):
    handle = attach_adapter(tiny_loaded.model, adapter_cfg)
    before = _logits(handle.module, IDS)
    ids = IDS[0].tolist()
    sample = Sample(ids, [IGNORE_INDEX] * 4 + ids[4:], 4)
    opt = torch.optim.AdamW(handle.trainable_parameters(), lr=1e-2)
    handle.module.train()
    loss, _ = packed_loss(handle.module, pack_shared_prefix([sample]))
    loss.backward()
    opt.step()
    handle.module.eval()
    assert not torch.allclose(_logits(handle.module, IDS), before)
    tiny_loaded.model = handle.detach()


def test_mismatched_weights_are_refused_before_any_change(tiny_loaded, adapter_cfg, tmp_path):
    handle = attach_adapter(tiny_loaded.model, adapter_cfg)
    weights = next(n for n in handle.save(tmp_path) if n.endswith(".safetensors"))
    state = handle.state_dict()
    tiny_loaded.model = handle.detach()
    before = {k: v.clone() for k, v in tiny_loaded.model.state_dict().items()}
    # same keys, wrong shapes (as from a base model of another size)
    from safetensors.torch import save_file

    save_file({k: torch.zeros(v.shape[0] + 1, *v.shape[1:]) for k, v in state.items()}, str(tmp_path / weights))
    with pytest.raises(AdapterError, match="shape"):
        load_adapter(tiny_loaded.model, adapter_cfg, tmp_path)
    (tmp_path / weights).write_bytes(b"not a safetensors file")
    with pytest.raises(AdapterError, match="cannot read"):
        load_adapter(tiny_loaded.model, adapter_cfg, tmp_path)
    after = tiny_loaded.model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert not hasattr(tiny_loaded.model, "peft_config")


def test_lora_directory_loads_with_plain_peft(tiny_loaded, tmp_path):
    from peft import PeftModel

    handle = attach_adapter(tiny_loaded.model, CONFIGS["lora"])
    _perturb(handle)
    want = _logits(handle.module, IDS)
    handle.save(tmp_path)
    tiny_loaded.model = handle.detach()
    peft_model = PeftModel.from_pretrained(tiny_loaded.model, str(tmp_path))
    assert torch.allclose(_logits(peft_model, IDS), want, atol=1e-6)
    tiny_loaded.model = peft_model.unload()


def test_unknown_kind_is_refused(tiny_loaded):
    class Fake:
        kind = "nope"

    with pytest.raises(AdapterError, match="unknown adapter kind 'nope'; known: gated_memory, lora"):
        attach_adapter(tiny_loaded.model, Fake())


TOP_HALF = LoraAdapterConfig(r=4, alpha=8, target_modules="all-linear", layer_share=0.5)


def test_lora_layer_share_adapts_the_top_layers_and_backward_stops_below_them(tiny_loaded):
    layers = tiny_loaded.model.model.layers
    first = len(layers) // 2
    handle = attach_adapter(tiny_loaded.model, TOP_HALF)
    adapted = {int(k.split(".layers.")[1].split(".")[0]) for k in handle.state_dict()}
    assert adapted == set(range(first, len(layers)))
    # every linear of an adapted layer, as 'all-linear' picks them
    assert len(handle.state_dict()) == 2 * 7 * len(adapted)
    outputs = []
    hooks = [layer.register_forward_hook(lambda m, i, o: outputs.append(o[0] if isinstance(o, tuple) else o)) for layer in layers]
    handle.module.train()
    handle.module(input_ids=IDS)
    for hook in hooks:
        hook.remove()
    # autograd records nothing below the lowest adapted layer: its backward is never computed
    assert [o.requires_grad for o in outputs] == [i >= first for i in range(len(layers))]
    handle.module.eval()
    tiny_loaded.model = handle.detach()


def test_lora_layer_share_saves_and_loads_in_every_path(tiny_loaded, tmp_path):
    from peft import PeftModel

    from lift_ray.adapters.lora import BASE_ROW, LoraBank

    base = _logits(tiny_loaded.model, IDS)
    states, want = {}, {}
    for name, cfg in (("all", CONFIGS["lora"]), ("top", TOP_HALF)):
        handle = attach_adapter(tiny_loaded.model, cfg)
        _perturb(handle)
        want[name], states[name] = _logits(handle.module, IDS), handle.state_dict()
        handle.save(tmp_path / name)
        tiny_loaded.model = handle.detach()
    handle = load_adapter(tiny_loaded.model, TOP_HALF, tmp_path / "top")  # absorb's reload
    assert torch.allclose(_logits(handle.module, IDS), want["top"], atol=1e-6)
    tiny_loaded.model = handle.detach()
    with pytest.raises(AdapterError):  # an every-layer config does not take the top layers' weights
        load_adapter(tiny_loaded.model, CONFIGS["lora"], tmp_path / "top")
    bank = LoraBank(tiny_loaded.model)  # serving: both kinds resident, answered in one batch
    bank.add("all", CONFIGS["lora"], states["all"])
    bank.add("top", TOP_HALF, states["top"])
    with torch.no_grad():
        logits = bank.module(input_ids=IDS.repeat(3, 1), adapter_names=["top", "all", BASE_ROW]).logits
    for row, expected in enumerate((want["top"], want["all"], base)):
        assert torch.allclose(logits[row], expected[0], atol=1e-5)
    tiny_loaded.model = bank.detach()
    peft_model = PeftModel.from_pretrained(tiny_loaded.model, str(tmp_path / "top"))  # plain peft reads the layer list
    assert torch.allclose(_logits(peft_model, IDS), want["top"], atol=1e-6)
    tiny_loaded.model = peft_model.unload()
