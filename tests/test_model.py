import pytest
import torch

from lift_ray.adapters import attach_adapter
from lift_ray.config import LoraAdapterConfig, ModelSpec
from lift_ray.model import ModelLoadError, _publish_dir, check_model_spec, load_model, resolve_model_path, weights_fingerprint


def test_missing_local_paths_are_refused(tmp_path):
    for name in [str(tmp_path / "nope"), "./rel/dir", "~/missing/x.gguf", "a/b/c"]:
        with pytest.raises(ModelLoadError, match="model path does not exist"):
            check_model_spec(ModelSpec(name_or_path=name))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="has no config.json"):
        resolve_model_path(ModelSpec(name_or_path=str(tmp_path / "empty")))
    check_model_spec(ModelSpec(name_or_path="org/some-model"))  # a hub id passes the cheap check


def test_local_directory_loads_frozen(tiny_model_dir):
    loaded = load_model(ModelSpec(name_or_path=str(tiny_model_dir), dtype="float32", device="cpu"))
    assert loaded.model_id == str(tiny_model_dir)
    assert loaded.max_positions == 1024
    assert not any(p.requires_grad for p in loaded.model.parameters())
    assert loaded.weights_hash.startswith("sha256:")
    assert weights_fingerprint(str(tiny_model_dir)) == loaded.weights_hash  # memoised, same value


def test_four_bit_nf4_works_on_cpu(tiny_model_dir):
    pytest.importorskip("bitsandbytes")
    loaded = load_model(ModelSpec(name_or_path=str(tiny_model_dir), dtype="float32", load_in_4bit=True, device="cpu"))
    linear = loaded.model.model.layers[0].self_attn.q_proj
    assert type(linear).__name__ == "Linear4bit"
    ids = torch.tensor([[5, 17, 42, 99]])
    handle = attach_adapter(loaded.model, LoraAdapterConfig(r=4, alpha=8, target_modules="all-linear"))
    handle.module.train()
    loss = handle.module(input_ids=ids, labels=ids).loss
    loss.backward()
    assert all(p.grad is not None for p in handle.trainable_parameters())
    handle.module.eval()
    with torch.no_grad():
        out = handle.module.generate(input_ids=ids, max_new_tokens=3, do_sample=False)
    assert out.shape[1] == 7
    handle.detach()


def test_publish_is_atomic_and_tolerates_a_racing_winner(tmp_path):
    final = tmp_path / "model"
    tmp = tmp_path / ".model.tmp1"
    tmp.mkdir()
    (tmp / "config.json").write_text("{}")
    _publish_dir(tmp, final)
    assert (final / "config.json").is_file() and not tmp.exists()
    loser = tmp_path / ".model.tmp2"
    loser.mkdir()
    (loser / "config.json").write_text("{}")
    _publish_dir(loser, final)  # someone else already published: ours is discarded
    assert not loser.exists() and (final / "config.json").is_file()


@pytest.mark.parametrize("four_bit", [False, True])
def test_random_init_of_a_real_shape(tiny_model_dir, four_bit):
    """The GPU timing path (no weights can reach a GPU host): a config's shape with random weights."""
    from lift_ray.model import load_random_init

    if four_bit:
        pytest.importorskip("bitsandbytes")
    spec = ModelSpec(device="cpu", dtype="float32", load_in_4bit=four_bit)
    loaded = load_random_init(str(tiny_model_dir), spec, tokenizer_from=str(tiny_model_dir))
    assert loaded.model_id == f"random:{tiny_model_dir}"
    assert loaded.max_positions == 1024 and not any(p.requires_grad for p in loaded.model.parameters())
    linear = type(loaded.model.model.layers[0].self_attn.q_proj).__name__
    assert linear == ("Linear4bit" if four_bit else "Linear")
    with torch.no_grad():
        assert loaded.model(input_ids=torch.tensor([[1, 2, 3]])).logits.shape[-1] == loaded.model.config.vocab_size


def test_llama3_8b_shape_has_8b_parameters():
    from transformers import AutoModelForCausalLM

    from lift_ray.model import shape_config

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(shape_config("llama-3-8b"))
    assert abs(sum(p.numel() for p in model.parameters()) - 8.03e9) < 0.01e9
