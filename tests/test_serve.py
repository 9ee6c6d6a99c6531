"""The Serve application over real HTTP on 127.0.0.1, driven by the official ``openai`` client.

One local Ray head per session (tests/conftest.py); two apps on one Serve HTTP port: ``/`` without
auth (K = 2 adapters per replica, so six documents force evictions) and ``/secure`` with a bearer
key. Every served answer is compared with the same question answered by a local engine on the same
store (greedy), so an answer from a wrong adapter fails the test.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import time

import pytest
import yaml

from ray_cluster import free_port

pytestmark = [pytest.mark.serve, pytest.mark.ray]

DOCS = [
    " ".join(f"Tower {i} keeper {j} counts {i * 13 + j} gulls and names the tortoise Marlowe {i}." for j in range(6))
    for i in range(10)
]
LORA_COUNT = 8  # DOCS[:8] LoRA, DOCS[8:] Gated Memory
API_KEY = "sk-lift-ray-test-key"
KEY_ENV = "LIFT_RAY_TEST_SERVE_KEY"
QUESTION = "Who keeps the tortoise?"


def _overrides(model_dir, store):
    return {
        "model": {"name_or_path": str(model_dir), "device": "cpu", "dtype": "float32"},
        "segments": {"context_window": 48, "segment_length": 32},
        "train": {"epochs": 2, "learning_rate": 1e-2},
        "aux_qa": {"generator": "none"},
        "inference": {"max_new_tokens": 12, "question_reserve": 64, "rag_when_unsupported": False},
        "store": {"uri": str(store)},
    }


@pytest.fixture(scope="module")
def store_dir(tiny_model_dir, tmp_path_factory):
    """Ten documents absorbed locally (eight LoRA, two Gated Memory), plus the config YAML the app reads."""
    from lift_ray.config import build_config
    from lift_ray.infer import LiftEngine

    root = tmp_path_factory.mktemp("serve")
    store = root / "store"
    overrides = _overrides(tiny_model_dir, store)
    (root / "lift.yaml").write_text(yaml.safe_dump(overrides))
    engine = LiftEngine.from_config(build_config(str(root / "lift.yaml")))
    ids = [engine.absorb(t, progress=False, alias=f"tower-{i}").doc_id for i, t in enumerate(DOCS[:LORA_COUNT])]
    gated = build_config(str(root / "lift.yaml"), {"adapter": {"kind": "gated_memory", "gate_init": 0.4},
                                                    "train": {"epochs": 4, "learning_rate": 3e-2}})
    gm = LiftEngine.from_config(gated)
    ids += [gm.absorb(t, progress=False, alias=f"tower-{i}").doc_id for i, t in enumerate(DOCS[LORA_COUNT:], LORA_COUNT)]
    # Six documents of both kinds (LoRA towers 0-3, Gated Memory towers 8-9) for most tests; all ten for the load test.
    return root, ids[:4] + ids[8:], ids


@pytest.fixture(scope="module")
def reference(store_dir):
    """Answers of a local engine on the same store: what every served answer must equal."""
    from lift_ray.config import build_config
    from lift_ray.infer import LiftEngine

    root, *_ = store_dir
    engine = LiftEngine.from_config(build_config(str(root / "lift.yaml")), max_resident=8)
    cache = {}

    def answer(doc, mode="lift+icl", question=QUESTION, max_tokens=None):
        key = (doc, mode, question, max_tokens)
        if key not in cache:
            cache[key] = engine.answer(question, doc, mode, max_new_tokens=max_tokens)
        return cache[key]

    return answer


@pytest.fixture(scope="module")
def server(ray_client, store_dir):
    from ray import serve

    from lift_ray.config import ServeConfig
    from lift_ray.serve import build_app

    root, *_ = store_dir
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    common = dict(config=str(root / "lift.yaml"), cpus_per_replica=0.5, threads=1, absorb_cpus=0.5,
                  manifest_ttl_s=0.5, max_request_bytes=64_000)
    os.environ[KEY_ENV] = API_KEY
    try:
        serve.run(build_app(ServeConfig(adapters_per_replica=2, max_batch_size=4, max_ongoing_requests=8,
                                        max_queued_requests=8, name="open", **common)),
                  name="open", route_prefix="/", blocking=False)
        serve.run(build_app(ServeConfig(api_key_env=KEY_ENV, name="secure", **common)),
                  name="secure", route_prefix="/secure", blocking=False)
    finally:
        os.environ.pop(KEY_ENV, None)
    url = f"http://127.0.0.1:{port}"
    _wait_until(lambda: _get(f"{url}/healthz")[0] == 200 and _get(f"{url}/secure/healthz")[0] == 200, 60)
    yield url
    import ray

    serve.delete("open")
    serve.delete("secure")
    serve.shutdown()
    for name in ("open", "secure"):  # the detached absorbing actors hold CPUs the later Ray tests need
        try:
            ray.kill(ray.get_actor(f"{name}-documents", namespace="lift-ray"))
        except ValueError:
            pass


def _wait_until(check, timeout: float, every: float = 0.5):
    deadline = time.time() + timeout
    last = None
    while True:
        try:
            if check():
                return
        except Exception as exc:
            last = exc
            if time.time() > deadline:
                raise
        if time.time() > deadline:
            raise TimeoutError(f"condition not met in time (last error: {last!r})")
        time.sleep(every)


def _request(method: str, url: str, body=None, headers=None, raw: bytes | None = None):
    import urllib.error
    import urllib.request

    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, json.loads(resp.read() or b"null"), {k.lower(): v for k, v in resp.headers.items()}
    except urllib.error.HTTPError as err:
        text = err.read()
        return err.code, json.loads(text) if text.startswith(b"{") else text.decode(), {k.lower(): v for k, v in err.headers.items()}


def _get(url, **kw):
    return _request("GET", url, **kw)[:2]


def _client(url, key="unused"):
    import openai

    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=120)


def _ask(client, model, mode="lift+icl", **kw):
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": kw.pop("question", QUESTION)}],
                                          extra_body={"lift_mode": mode}, **kw)


# --- endpoints -----------------------------------------------------------------------------------


def test_models_lists_every_document_and_the_base(server, store_dir):
    _, ids, _ = store_dir
    models = {m.id: m for m in _client(server).models.list().data}
    assert set(ids) <= set(models)
    entry = models[ids[0]].model_dump()
    assert entry["alias"] == "tower-0" and entry["adapter_kinds"] == ["lora"] and entry["tokens"] > 0
    assert models[ids[4]].model_dump()["adapter_kinds"] == ["gated_memory"]
    assert any(m.model_dump().get("lift_kind") == "base" for m in models.values())


@pytest.mark.parametrize("mode", ["icl", "lift", "lift+icl", "lift+rag"])
def test_chat_answers_from_the_documents_adapter(server, store_dir, reference, mode):
    _, ids, _ = store_dir
    client = _client(server)
    for doc in (ids[0], ids[4]):
        resp = _ask(client, doc, mode)
        ref = reference(doc, mode)
        assert resp.choices[0].message.content == ref.answer
        assert resp.choices[0].finish_reason == ref.finish_reason
        assert resp.usage.prompt_tokens == ref.prompt_tokens and resp.usage.completion_tokens == ref.new_tokens
        lift = resp.model_dump()["lift"]
        assert lift == {"doc_id": doc, "variant": ref.variant, "mode": mode, "view": ref.view, "answered_as": ref.answered_as,
                        "answered_as_reason": ref.answered_as_reason}


def test_alias_and_variant_address_the_same_document(server, store_dir, reference):
    _, ids, _ = store_dir
    client = _client(server)
    variant = reference(ids[1]).variant
    for model in ("tower-1", f"{ids[1]}:{variant}"):
        resp = _ask(client, model)
        assert resp.model == model and resp.choices[0].message.content == reference(ids[1]).answer


def test_streaming_equals_non_streaming(server, store_dir, reference):
    _, ids, _ = store_dir
    client = _client(server)
    for doc, mode in ((ids[2], "lift"), (ids[5], "lift+icl"), (ids[2], "icl")):
        chunks = list(_ask(client, doc, mode, stream=True))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == _ask(client, doc, mode).choices[0].message.content == reference(doc, mode).answer
        last = chunks[-1].model_dump()
        assert last["choices"][0]["finish_reason"] == reference(doc, mode).finish_reason
        assert last["usage"]["completion_tokens"] == reference(doc, mode).new_tokens
        assert last["lift"]["doc_id"] == doc


def test_sse_ends_with_done(server, store_dir):
    import urllib.request

    _, ids, _ = store_dir
    body = {"model": ids[0], "messages": [{"role": "user", "content": QUESTION}], "stream": True}
    req = urllib.request.Request(f"{server}/v1/chat/completions", data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        events = [line for line in resp.read().decode().split("\n\n") if line]
    assert events[-1] == "data: [DONE]" and all(e.startswith("data: ") for e in events)


@pytest.mark.parametrize(
    "exc, status, code",
    [
        ("DocumentNotFound", 404, "model_not_found"),
        ("AdapterNotFound", 404, "model_not_found"),
        ("AdapterNotReady", 409, "adapter_not_ready"),
        ("StoreError", 500, "adapter_error"),  # a damaged entry: not "no such model", whatever it says
    ],
)
def test_store_errors_map_to_statuses_by_type(exc, status, code):
    from lift_ray import store
    from lift_ray.serve.app import error_result

    result = error_result(getattr(store, exc)("unknown document id, has no adapter yet"))  # the message is no cue
    assert (result["status"], result["error"]["code"]) == (status, code)


def test_errors_have_openai_shape_and_status(server, store_dir):
    import openai

    _, ids, _ = store_dir
    client = _client(server)
    with pytest.raises(openai.NotFoundError) as err:
        _ask(client, "f" * 32)
    assert err.value.code == "model_not_found" and err.value.body["param"] == "model"
    with pytest.raises(openai.NotFoundError):
        _ask(client, "no-such-alias")
    with pytest.raises(openai.BadRequestError) as err:
        _ask(client, ids[0], mode="telepathy")
    assert err.value.body["param"] == "lift_mode"
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=ids[0], messages=[{"role": "user", "content": QUESTION}], max_tokens="many")
    assert err.value.body["param"] == "max_tokens"
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=ids[0], messages=[{"role": "system", "content": "hi"}])
    assert err.value.body["param"] == "messages"
    with pytest.raises(openai.BadRequestError) as err:  # 1024 positions on the tiny model
        _ask(client, ids[0], mode="lift", question="tortoise " * 1100)
    assert err.value.code == "context_length_exceeded"
    status, body, _ = _request("POST", f"{server}/v1/chat/completions", raw=b"{not json")
    assert status == 400 and set(body["error"]) == {"message", "type", "param", "code"}
    status, body, _ = _request("POST", f"{server}/v1/chat/completions", raw=b"x" * 70_000)
    assert status == 413 and body["error"]["code"] == "request_too_large"
    assert _request("GET", f"{server}/v1/documents/..%2F..%2Fetc")[0] in (400, 404)
    status, body, _ = _request("GET", f"{server}/v1/documents/not.an.id")
    assert status == 400 and body["error"]["code"] == "invalid_id"
    status, body, _ = _request("DELETE", f"{server}/v1/documents/{'0' * 32}")
    assert status == 404 and body["error"]["code"] == "model_not_found"


def test_auth_on_and_off(server, store_dir, reference):
    import openai

    _, ids, _ = store_dir
    secure = f"{server}/secure"
    with pytest.raises(openai.AuthenticationError) as err:
        _ask(_client(secure, "wrong"), ids[0])
    assert err.value.code == "invalid_api_key"
    assert _request("GET", f"{secure}/v1/models")[0] == 401
    assert _ask(_client(secure, API_KEY), ids[0]).choices[0].message.content == reference(ids[0]).answer
    assert _request("GET", f"{secure}/healthz")[0] == 200
    assert _request("GET", f"{server}/v1/models")[0] == 200  # the open app needs no key


def test_eviction_round_robin_over_six_documents(server, store_dir, reference):
    """K = 2 adapters per replica, six documents asked round-robin: every answer from the right adapter."""
    from ray import serve

    _, ids, _ = store_dir
    client = _client(server)
    for _ in range(2):
        for doc in ids:
            assert _ask(client, doc, "lift").choices[0].message.content == reference(doc, "lift").answer, doc
    resident = serve.get_deployment_handle("LiftModel", app_name="open").resident.remote().result()
    assert len(resident) <= 3  # K, plus at most one still pinned by a request finishing


def test_concurrent_mixed_requests(server, store_dir, reference):
    _, ids, _ = store_dir
    # 12 at once can meet the open app's back-pressure (8 ongoing + 8 queued): its answer is a 503 with
    # Retry-After, which a client retries (the openai client does); every answer must still be right
    client = _client(server).with_options(max_retries=4)
    jobs = [(ids[i % 6], ("icl", "lift", "lift+icl")[i % 3]) for i in range(12)]
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        got = list(pool.map(lambda job: _ask(client, *job), jobs))
    for (doc, mode), resp in zip(jobs, got):
        assert resp.choices[0].message.content == reference(doc, mode).answer


def test_posted_document_is_absorbed_outside_replicas_then_listed_and_deleted(server, reference):
    client = _client(server)
    text = "The lighthouse of Port Quillon was designed by Ada Brightwater in 1887. " * 4
    status, job, headers = _request("POST", f"{server}/v1/documents", {"text": text, "alias": "lighthouse"})
    assert status == 202 and job["status"] in ("queued", "absorbing") and headers["location"].endswith(job["id"])
    doc = job["doc_id"]
    assert doc not in {m.id for m in client.models.list().data}
    listed = {d["doc_id"]: d for d in _get(f"{server}/v1/documents")[1]["data"]}
    assert listed[doc]["status"] in ("queued", "absorbing", "absorbed") and listed[doc]["alias"] == "lighthouse"
    # stored with the POST: retrieval answers by alias at once, whatever the job's state
    assert _ask(client, "lighthouse", "rag").choices[0].message.content == reference(doc, "rag").answer
    seen = set()

    def done():
        state = _get(f"{server}/v1/documents/{job['id']}")[1]
        seen.add(state["status"])
        assert state["status"] != "failed", state
        return state["status"] == "absorbed"

    _wait_until(done, 180)
    assert _get(f"{server}/v1/documents/{job['id']}")[1]["progress"]["epoch"] >= 1
    assert doc in {m.id for m in client.models.list().data}, "listed without a restart"
    listed = {d["doc_id"]: d for d in _get(f"{server}/v1/documents")[1]["data"]}
    assert listed[doc]["status"] == "absorbed" and listed[doc]["variants"] and listed[doc]["tokens"] > 0
    assert _get(f"{server}/v1/documents/{doc}")[1]["status"] == "absorbed"
    assert _ask(client, "lighthouse", "lift").choices[0].message.content == reference(doc, "lift").answer
    status, body, _ = _request("DELETE", f"{server}/v1/documents/{doc}")
    assert status == 200 and body["deleted"]
    import openai

    with pytest.raises(openai.NotFoundError):
        _ask(client, doc, "lift")
    assert doc not in {m.id for m in client.models.list().data}
    from ray import serve

    handle = serve.get_deployment_handle("LiftModel", app_name="open")
    _wait_until(lambda: all(k[0] != doc for k in handle.resident.remote().result()), 30)


def test_a_document_being_absorbed_answers_in_the_base_modes(server, store_dir, reference):
    """Its text is stored when the absorb starts (or the POST arrives): icl and rag answer from it,
    lift+icl and lift+rag answer as those two and say why, lift waits for the adapter (409)."""
    from lift_ray.infer import doc_id_for
    from lift_ray.modes import NO_ADAPTER_YET
    from lift_ray.store import AdapterStore
    from lift_ray.text import normalize_text

    root, *_ = store_dir
    text = normalize_text("The ferry to Skellmoor leaves at dawn. Its captain is Odile Fenwarren. " * 3)
    doc = doc_id_for(text)
    store = AdapterStore(str(root / "store"))
    store.put_document(doc, text)  # what an absorb in another process has done before it trains
    client = _client(server)
    for mode, base in (("rag", "rag"), ("icl", "icl"), ("lift+rag", "rag"), ("lift+icl", "icl")):
        resp = _ask(client, doc, mode)
        assert resp.choices[0].message.content == reference(doc, base).answer
        lift = resp.model_extra["lift"]
        assert lift["variant"] is None and lift["answered_as"] == base
        assert lift["answered_as_reason"] == (NO_ADAPTER_YET if mode != base else None)
    status, body, headers = _request("POST", f"{server}/v1/chat/completions", {
        "model": doc, "messages": [{"role": "user", "content": QUESTION}], "lift_mode": "lift"})
    assert status == 409 and body["error"]["code"] == "adapter_not_ready" and "retry-after" in headers
    assert doc not in {m.id for m in client.models.list().data}  # listed once its adapter is published
    listed = {d["doc_id"]: d for d in _get(f"{server}/v1/documents")[1]["data"]}
    assert listed[doc]["status"] == "no_adapter" and listed[doc]["variants"] == []  # absorbing elsewhere
    assert _get(f"{server}/v1/documents/{doc}")[1]["status"] == "no_adapter"
    status, body, _ = _request("DELETE", f"{server}/v1/documents/{doc}")  # an absorb that failed leaves no way in
    assert status == 200 and body["variants"] == [] and not store.has_document(doc)
    status, body, _ = _request("POST", f"{server}/v1/chat/completions", {
        "model": doc, "messages": [{"role": "user", "content": QUESTION}], "lift_mode": "rag"})
    assert status == 404


def test_a_corrupt_adapter_fails_its_document_only(server, store_dir, reference):
    """A document whose adapter file was damaged after publishing answers 500 adapter_error in the
    modes that need it; the base modes and every other document keep answering."""
    import openai

    from lift_ray.config import build_config
    from lift_ray.infer import LiftEngine

    root, ids, _ = store_dir
    engine = LiftEngine.from_config(build_config(str(root / "lift.yaml")))
    doc = engine.absorb("The lighthouse keeper of Corrow owns a grey goat called Brimble. " * 6,
                        progress=False, alias="damaged").doc_id
    weights = next((root / "store" / "docs" / doc / "adapters").glob("*/adapter_model.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-64] + b"\0" * 64)
    client = _client(server)
    _wait_until(lambda: doc in {m.id for m in client.models.list().data}, 30)
    with pytest.raises(openai.InternalServerError) as err:
        _ask(client, doc, mode="lift")
    assert err.value.body["code"] == "adapter_error" and "corrupt" in err.value.body["message"]
    icl = _ask(client, doc, mode="icl").choices[0]  # no adapter needed: answered as the local engine does
    assert icl.finish_reason in ("stop", "length") and icl.message.content == reference(doc, "icl").answer
    assert _ask(client, ids[0], mode="lift").choices[0].message.content == reference(ids[0], "lift").answer


def test_posted_document_errors(server):
    status, body, _ = _request("POST", f"{server}/v1/documents", {"text": "   "})
    assert status == 400 and body["error"]["param"] == "text"
    status, body, _ = _request("POST", f"{server}/v1/documents", {"txt": "hello"})
    assert status == 400 and body["error"]["param"] in ("text", "txt")


def test_upload_a_file(server):
    import urllib.request

    boundary = "liftraytestboundary"
    content = "Marlowe the tortoise lives in the lighthouse of Port Quillon. " * 3
    raw = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"note.txt\"\r\n"
           f"Content-Type: text/plain\r\n\r\n{content}\r\n--{boundary}--\r\n").encode()
    req = urllib.request.Request(f"{server}/v1/documents", data=raw, method="POST",
                                 headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        job = json.loads(resp.read())
        assert resp.status == 202 and job["alias"] == "note.txt"


def test_replica_killed_mid_request(server, store_dir, reference):
    """SIGKILL the model replica while it answers: later requests succeed from the right adapters."""
    from ray import serve

    _, ids, _ = store_dir
    client = _client(server)
    handle = serve.get_deployment_handle("LiftModel", app_name="open")
    pid = handle.pid.remote().result()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(lambda: _ask(client, ids[0], "lift+icl", max_tokens=400))
        time.sleep(0.5)
        os.kill(pid, signal.SIGKILL)
        try:
            pending.result()
        except Exception as exc:  # the request in flight may fail; it must fail cleanly, as a 5xx
            assert getattr(exc, "status_code", 503) >= 500
    _wait_until(lambda: _ask(client, ids[1], "lift").choices[0] is not None, 180, every=2)
    assert handle.pid.remote().result() != pid
    for doc in ids:
        assert _ask(client, doc, "lift").choices[0].message.content == reference(doc, "lift").answer


def test_bounded_load_on_loopback(server, store_dir, reference, capsys):
    """200 requests, 20 at a time, over 10 documents: only 200s and backpressure (503 + Retry-After)."""
    _, _, ids = store_dir
    jobs = [(ids[i % 10], ("icl", "lift", "lift+icl")[i % 3]) for i in range(200)]

    def one(job):
        doc, mode = job
        body = {"model": doc, "messages": [{"role": "user", "content": QUESTION}], "lift_mode": mode}
        start = time.perf_counter()
        status, payload, headers = _request("POST", f"{server}/v1/chat/completions", body)
        return status, time.perf_counter() - start, payload, headers, job

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        results = list(pool.map(one, jobs))
    wall = time.perf_counter() - start
    statuses = [r[0] for r in results]
    assert set(statuses) <= {200, 503}, sorted(set(statuses))
    assert statuses.count(200) >= 20, "at least the first wave is answered"
    for status, _, payload, headers, (doc, mode) in results:
        if status == 200:
            assert payload["choices"][0]["message"]["content"] == reference(doc, mode).answer
        else:
            assert headers.get("retry-after") and payload["error"]["code"] == "overloaded"
    ok = sorted(r[1] for r in results if r[0] == 200)
    p50, p95 = ok[len(ok) // 2], ok[int(len(ok) * 0.95) - 1]
    with capsys.disabled():
        print(f"\nserve load: 200 requests, 20 concurrent, 10 documents: {statuses.count(200)} x 200, "
              f"{statuses.count(503)} x 503; p50 {p50:.3f} s, p95 {p95:.3f} s; {len(ok) / wall:.1f} answers/s")


def test_readme_examples(server, store_dir, reference, tmp_path):
    """The README's Serve examples (curl and openai), run as written against this server."""
    import contextlib
    import io
    import re
    import subprocess
    from pathlib import Path

    _, ids, _ = store_dir
    repo = Path(__file__).resolve().parents[1]
    section = (repo / "README.md").read_text().split("## Serve", 1)[1].split("\n## ", 1)[0]
    shell = [b for b in re.findall(r"```bash\n(.*?)```", section, flags=re.S) if "curl" in b][0]
    python = re.findall(r"```python\n(.*?)```", section, flags=re.S)[0]
    env = {**os.environ, "URL": server, "DOC": ids[0]}
    (tmp_path / "notes.txt").write_text("The keeper's tortoise Marlowe sleeps under the stairs of the lighthouse.")
    commands = [c for c in shell.replace("\\\n", " ").splitlines() if c.strip().startswith("curl")]
    outputs = []
    for command in commands:
        out = subprocess.run(["bash", "-ec", command], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, (command, out.stderr)
        outputs.append(out.stdout)
    models, chat, sse, posted, uploaded = outputs
    assert ids[0] in {m["id"] for m in json.loads(models)["data"]}
    assert json.loads(chat)["choices"][0]["message"]["content"] == reference(ids[0], "lift").answer
    assert sse.rstrip().endswith("data: [DONE]")
    assert json.loads(posted)["status"] == "queued" and json.loads(uploaded)["alias"] == "notes.txt"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(python, {"URL": server, "DOC": ids[0]})
    assert printed.getvalue().startswith(reference(ids[0], "lift").answer + " {'doc_id': '" + ids[0])


# --- the embedded SmolLM2: facts answered from each document's own adapter ------------------------


@pytest.fixture(scope="module")
def smol_server(server, recall_bulk_run):
    """The embedded SmolLM2 serving the two documents the bulk recall test absorbed (no second absorb)."""
    from ray import serve

    from lift_ray.config import ServeConfig
    from lift_ray.serve import build_app

    cfg, docs, summary = recall_bulk_run
    assert summary.error is None and len(summary.absorbed) == 2
    serve.run(build_app(ServeConfig(store=cfg.store.uri, overrides={"inference": {"max_new_tokens": 24}},
                                    cpus_per_replica=1, threads=2, max_batch_size=8, name="smol")),
              name="smol", route_prefix="/smol", blocking=False)
    url = f"{server}/smol"
    _wait_until(lambda: _get(f"{url}/healthz")[0] == 200, 180)
    yield url, [d.doc_id for d in docs]
    serve.delete("smol")


@pytest.mark.slow
@pytest.mark.xfail(strict=False, reason="issue 10, open: passed in this stop's two runs with the new generator, "
                   "failed with the one before; non-strict until CI's machine confirms it (routing is covered by the "
                   "tiny-model tests)")
def test_smollm2_answers_each_document_from_its_own_adapter(smol_server):
    """Each fact lies outside its document's head+tail window, so only that document's adapter supplies it;
    asked of the other document, the answer lacks it. Then 8 concurrent requests over both documents."""
    from conftest import RECALL_DOCUMENTS
    from lift_ray.evaluate.metrics import is_correct

    url, ids = smol_server
    client = _client(url)
    for i, (_, question, keywords) in enumerate(RECALL_DOCUMENTS):
        own = _ask(client, ids[i], "lift+icl", question=question).model_dump()
        assert is_correct(own["choices"][0]["message"]["content"], keywords), own
        assert own["lift"]["variant"] and own["lift"]["doc_id"] == ids[i]
        other = _ask(client, ids[1 - i], "lift+icl", question=question).choices[0].message.content
        assert not is_correct(other, keywords), other
    jobs = [i % 2 for i in range(8)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda i: _ask(client, ids[i], "lift+icl", question=RECALL_DOCUMENTS[i][1]), jobs))
    for i, reply in zip(jobs, replies):
        assert is_correct(reply.choices[0].message.content, RECALL_DOCUMENTS[i][2]), (i, reply.choices[0].message.content)


def test_the_ui_http_backend_against_the_real_app(server, store_dir, reference):
    """The Gradio app's remote backend (ui.backends.HttpBackend) over this Serve app: listing,
    streamed answers equal to the engine's, absorbing through POST /v1/documents with progress,
    and a refused key reported as the UI's own error."""
    from conftest import drain
    from ui.backends import BackendError, HttpBackend

    _, ids, _ = store_dir
    backend = HttpBackend(server, poll_interval=0.2)
    rows = {row.doc_id: row for row in backend.list_docs()}
    assert set(ids) <= set(rows) and rows[ids[0]].alias == "tower-0" and rows[ids[4]].adapter_kinds == ["gated_memory"]
    for doc, mode in ((ids[0], "lift+icl"), (ids[4], "icl"), (ids[1], "lift+rag")):
        pieces, usage = drain(backend.stream(QUESTION, doc, mode))
        ref = reference(doc, mode)
        assert "".join(pieces).strip() == ref.answer
        assert usage.prompt_tokens == ref.prompt_tokens and usage.completion_tokens == ref.new_tokens
    events = []
    outcome = backend.absorb("The bell of Port Quillon was cast by Ivo Marren in 1790. " * 4, title="bell",
                             on_progress=lambda fraction, text: events.append((fraction, text)))
    assert outcome.status == "absorbed" and outcome.doc_id in {row.doc_id for row in backend.list_docs()}
    assert all(0.0 <= f <= 1.0 for f, _ in events)
    with pytest.raises(BackendError, match="refused the API key"):
        HttpBackend(f"{server}/secure", api_key="wrong").list_docs()
    # A document whose absorb has not published (text stored by another process): listed and said so.
    from lift_ray.store import AdapterStore, doc_id_for

    root, *_ = store_dir
    pending = "The ferry to Skellmoor leaves at dawn."
    AdapterStore(str(root / "store")).put_document(doc_id_for(pending), pending)
    try:
        row = {r.doc_id: r for r in backend.list_docs()}[doc_id_for(pending)]
        assert row.status == "no_adapter" and not row.absorbed and row.label.endswith("(no adapter yet: icl and rag answer now)")
        assert rows[ids[0]].absorbed
    finally:
        AdapterStore(str(root / "store")).delete(doc_id_for(pending))
