"""Shared fixtures: a tiny random Llama saved like a real checkpoint, seeds, isolated cache/store."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import random
import tempfile
import threading

import pytest
import torch

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CORPUS = [
    "The quick brown fox jumps over the lazy dog. Port Quillon is a harbour town.",
    "Given the context above, recite the following segment of the document.",
    "Answer the question based on the context above. Question: who designed the lighthouse?",
    "0123456789 ... the keeper keeps a tortoise named Marlowe.",
]


def make_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
    )
    fast.chat_template = CHATML
    return fast


def make_tiny_model(arch: str, vocab_size: int, seed: int = 0, **overrides):
    """A tiny random causal LM of a Llama-family architecture: 2 layers, hidden 64, 4 heads, 2 KV heads."""
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        MistralConfig,
        MistralForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    classes = {
        "llama": (LlamaConfig, LlamaForCausalLM),
        "mistral": (MistralConfig, MistralForCausalLM),
        "qwen2": (Qwen2Config, Qwen2ForCausalLM),
    }
    config_cls, model_cls = classes[arch]
    torch.manual_seed(seed)
    cfg = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    if arch == "llama":
        cfg["tie_word_embeddings"] = True
    cfg.update(overrides)
    return model_cls(config_cls(**cfg)).eval()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny random Llama + BPE tokenizer saved as a local checkpoint directory."""
    path = tmp_path_factory.mktemp("tiny-llama")
    tok = make_tokenizer()
    model = make_tiny_model("llama", len(tok))
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def pytest_configure(config):
    # Tests never touch the user's cache or store. LIFT_RAY_TEST_CACHE keeps the converted
    # embedded model between sessions; by default each session converts it once into a temp dir.
    os.environ["LIFT_RAY_CACHE"] = os.environ.get("LIFT_RAY_TEST_CACHE") or tempfile.mkdtemp(prefix="lift-ray-test-cache-")
    os.environ.pop("LIFT_RAY_STORE", None)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Ray reads RAY_AUTH_MODE once, when `ray` is first imported: a test that imports it before the
    # session's cluster starts (e.g. for Serve's config schema) would fix this process to "disabled",
    # and the cluster's token would then be refused. So the session has token auth from the start.
    from ray_cluster import make_auth_env

    os.environ.update(make_auth_env(tempfile.mkdtemp(prefix="lrray-auth-")))
    # Tiny-model ops gain nothing from threads; the real-model tests set their own count.
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    random.seed(0)
    torch.manual_seed(0)


@pytest.fixture
def tiny_loaded(tiny_model_dir):
    from lift_ray.config import ModelSpec
    from lift_ray.model import load_model

    return load_model(ModelSpec(name_or_path=str(tiny_model_dir), dtype="float32", load_in_4bit=False, device="cpu"))


@pytest.fixture
def tiny_config(tiny_model_dir, tmp_path):
    """A resolved config for the tiny model: short windows, few epochs."""
    from lift_ray.config import build_config, resolve_config

    cfg = build_config(
        None,
        {
            "model": {"name_or_path": str(tiny_model_dir), "device": "cpu", "dtype": "float32"},
            "segments": {"context_window": 48, "segment_length": 32},
            "train": {"epochs": 2, "learning_rate": 1e-2},
            # a random tiny model answers random tokens, which the check of lift+rag answers would always
            # reject; its own tests turn it on
            "inference": {"max_new_tokens": 8, "question_reserve": 64, "rag_when_unsupported": False},
            "store": {"uri": str(tmp_path / "store")},
        },
    )
    return resolve_config(cfg, num_params=10**6, max_positions=1024, on_cuda=False)


LONG_TEXT = " ".join(
    f"Sentence number {i} says that the keeper keeps a tortoise named Marlowe {i}." for i in range(30)
)


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-compatible endpoint (moto in server mode) on 127.0.0.1 with a bucket ``lift-ray``.

    The endpoint and dummy credentials go into the environment, where botocore (and so s3fs, and
    Ray job workers given the same variables) picks them up.
    """
    import boto3
    from moto.server import ThreadedMotoServer

    from ray_cluster import free_port

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    os.environ.update(env)
    boto3.client("s3").create_bucket(Bucket="lift-ray")
    yield env
    server.stop()


@pytest.fixture(scope="session")
def ray_head():
    from ray_cluster import LocalRay  # tests/ is on sys.path (rootdir conftest)

    # The session's token (pytest_configure): this process is a Ray client too (ray.init in ray_client).
    head = LocalRay(num_cpus=4, auth_env={k: os.environ[k] for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH")})
    yield head
    import ray

    ray.shutdown()
    head.stop()


@pytest.fixture(scope="session")
def ray_client(ray_head):
    import ray

    ray.init(address=ray_head.address, log_to_driver=False)
    return ray_head


@contextlib.contextmanager
def chat_endpoint(content: str):
    """A local OpenAI-compatible chat endpoint on 127.0.0.1 that answers every request with ``content``.

    Yields (base URL ending in /v1, the list of requests received: path, JSON body, Authorization header).
    """
    requests: list[dict] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's name)
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
            reply = {"choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}]}
            data = json.dumps(reply).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", requests
    finally:
        server.shutdown()
        server.server_close()


def pytest_collection_modifyitems(config, items):
    # Every test that starts or joins a Ray cluster carries the `ray` marker, so `-m "not ray"` is a
    # fast local loop; marking by fixture keeps a new Ray test from slipping through unmarked.
    ray_modules = set()
    for item in items:
        if {"ray_head", "ray_client"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.ray)
            ray_modules.add(item.module.__name__)
    # Modules that use the session's Ray cluster run last (whole modules, so their module fixtures
    # are set up once): the cluster starts with the first of them, and the real-model tests before
    # it get both cores to themselves instead of sharing them with Ray's daemons and idle workers.
    items.sort(key=lambda item: item.module.__name__ in ray_modules)


# --- two real documents, absorbed once per session with Gated Memory (the bulk, Gated Memory and
# Serve recall tests share them: one absorb each instead of three) ---------------------------------

RECALL_WINDOW = 64
_RECALL_FILLER = (
    "The corridor was painted a pale colour and the lamps were lit each evening by the staff. "
    "Visitors signed a ledger at the door, and the clerk stamped each page before noon. "
)
# Each document hides one fact in its middle, outside the 64-token head+tail window, and lacks the other's.
RECALL_DOCUMENTS = [
    (
        "The Vellmar Archive stands at the end of a quiet street in the town of Ossery. " + _RECALL_FILLER * 2
        + "The founder of the Vellmar Archive was a glassblower named Odile Brancas. " + _RECALL_FILLER * 2
        + "The archive closes early on the last day of every month.",
        "Who founded the Vellmar Archive?",
        ["Brancas"],
    ),
    (
        "The Tannick ferry crosses the grey lake twice a day in every season. " + _RECALL_FILLER * 2
        + "The captain of the Tannick ferry keeps a pet heron called Pimsley. " + _RECALL_FILLER * 2
        + "Tickets for the ferry are sold at a small wooden booth by the pier.",
        "What is the name of the heron kept by the captain of the Tannick ferry?",
        ["Pimsley"],
    ),
]


def recall_window(tokenizer, text: str) -> str:
    """The RECALL_WINDOW-token head+tail view of a recall document, as text: what ICL reads of it."""
    from lift_ray.segments import truncate_middle

    return tokenizer.decode(truncate_middle(tokenizer(text)["input_ids"], RECALL_WINDOW, []))


@pytest.fixture(scope="session")
def recall_bulk_run(ray_client, tmp_path_factory):
    """RECALL_DOCUMENTS absorbed on the embedded model by a bulk run on two Ray workers: (config, inputs, summary).

    The adapter is the paper's Gated Memory, otherwise the defaults (W and the answer length set):
    the default LoRA has its own real-model recall test (tests/test_recall.py)."""
    from lift_ray.bulk import run_bulk
    from lift_ray.config import build_config
    from lift_ray.documents import DocumentInput

    cfg = build_config(
        None,
        {
            "adapter": {"kind": "gated_memory"},
            "segments": {"context_window": RECALL_WINDOW},
            "inference": {"max_new_tokens": 24},
            "store": {"uri": str(tmp_path_factory.mktemp("recall-bulk") / "store")},
            "bulk": {"workers": 2, "cpus_per_worker": 1, "threads_per_worker": 1},
        },
    )
    docs = [DocumentInput(text, alias=f"doc-{i}") for i, (text, _, _) in enumerate(RECALL_DOCUMENTS)]
    return cfg, docs, run_bulk(docs, cfg, progress=False)


def drain(generator) -> tuple[list, object]:
    """Every item a generator yields, and the value it returns (``stream_answer`` returns its Answer)."""
    items = []
    while True:
        try:
            items.append(next(generator))
        except StopIteration as stop:
            return items, stop.value
