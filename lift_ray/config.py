"""Configuration: one pydantic model family, loadable from YAML and overridable by CLI flags.

Precedence, lowest first: generic defaults < model profile < YAML file (``--config``) < CLI flags.
Fields whose best value depends on the model size default to ``None`` here and are filled by
:func:`resolve_config` from the profile (see :data:`PROFILES`), once the model's size is known.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from lift_ray.modes import DEFAULT_MODE, Mode

EMBEDDED_MODEL = "embedded:smollm2-135m-instruct"

Profile = Literal["auto", "small", "large"]
QAGeneratorKind = Literal["none", "rules", "llm"]


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the offending field."""


class _Base(BaseModel):
    # extra="forbid" turns a typo in YAML into an error; protected_namespaces=() allows `model_*` fields.
    model_config = ConfigDict(extra="forbid", protected_namespaces=(), validate_assignment=True)


class ModelSpec(_Base):
    """Which base model to load and how."""

    name_or_path: str = Field(
        EMBEDDED_MODEL,
        description="Hugging Face model id, local directory, .gguf file, or the embedded default "
        f"'{EMBEDDED_MODEL}'.",
    )
    gguf_file: str | None = Field(None, description="GGUF file name inside name_or_path (a directory or hub repo).")
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) for a model id.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] | None = Field(
        None,
        description="Compute dtype of the base model, for training and answering. None: the profile's choice for "
        "the device.",
    )
    load_in_4bit: bool | None = Field(
        None, description="Quantise the base model to 4-bit NF4 with bitsandbytes. None: the profile's choice."
    )
    device: str = Field("auto", description="'auto' (CUDA if available, else CPU), 'cpu', 'cuda' or 'cuda:N'.")
    trust_remote_code: bool = Field(False, description="Allow model code from the hub; off unless asked.")
    attn_implementation: str | None = Field(None, description="Attention kernel (e.g. 'sdpa'); None lets transformers pick.")


class SegmentConfig(_Base):
    """How a document becomes contextualised training samples (paper §3.1-3.3)."""

    context_window: int | None = Field(
        None,
        ge=16,
        description="Token budget W of the in-context head+tail view used in training and by icl/lift+icl. "
        "None: what the model's positions allow after the question/answer reserve.",
    )
    segment_length: int | None = Field(
        None, ge=8, description="Segment length ℓ in tokens. None: min(W, the profile's cap)."
    )
    stride_fraction: float = Field(
        0.375, gt=0.0, le=1.0, description="Stride between segment starts as a fraction of ℓ (paper: 3/8)."
    )
    max_document_chars: int = Field(
        4_000_000, ge=1, description="Refuse documents longer than this many characters (after normalisation)."
    )
    recite_prompt: str = Field(
        "Given the context above, recite the following segment of the document.",
        description="Instruction placed between the truncated context and the target segment.",
    )
    mixin: str = Field(" ... ", description="Text joining the head and tail of a truncated document.")


class AuxQAConfig(_Base):
    """Auxiliary question -> short-answer tasks about the document (paper §3.3 "auxiliary tasks")."""

    generator: QAGeneratorKind | None = Field(
        None,
        description="Who writes the QA pairs: 'none' (segments only), 'rules' (offline, from a spaCy parse of each "
        "sentence: subject-side, object-side and cloze questions; for small models), 'llm' (a chat model writes "
        "them; checked against the text). None: the profile's choice.",
    )
    max_pairs: int = Field(64, ge=1, description="At most this many verified QA pairs per document: round-robin over its sentences, "
                           "answers stated in the fewest sentences first (a document's topic last).")
    max_pairs_per_sentence: int = Field(
        2, ge=1, description="Rule generator: pairs per sentence (the AT density); its names, numbers, dates and "
        "codes get questions_per_fact each even past it.",
    )
    questions_per_fact: int = Field(
        2, ge=1, description="Rule generator: questions asked about each name, number, date and code, each from "
        "another direction (subject side, object side, cloze) where the sentence offers one.",
    )
    sentences_per_window: int = Field(
        16, ge=1, description="LLM generator: consecutive sentences shown to the model per request (paper: ~16)."
    )
    pairs_per_window: int = Field(4, ge=1, description="LLM generator: pairs asked for per window of sentences.")
    llm_endpoint: str | None = Field(
        None,
        description="LLM generator: base URL of an OpenAI-compatible API (POST <url>/chat/completions). "
        "None: the loaded base model writes the pairs.",
    )
    llm_model: str | None = Field(None, description="LLM generator: model name sent to llm_endpoint.")
    views: list[Literal["head_tail", "retrieved", "none"]] | None = Field(
        None, min_length=1,
        description="Views each QA pair is trained in: head_tail (the icl / lift+icl prompt), retrieved (the chunks "
        "BM25 picks for its question: the rag / lift+rag prompt), none (the lift prompt: no document). Each view "
        "listed adds every pair once. None: the profile's value.",
    )
    short_question_views: list[Literal["head_tail", "retrieved", "none"]] = Field(
        default_factory=lambda: ["head_tail", "retrieved", "none"],
        description="Views in which a pair that has a short form (rule generator: the question without the phrases "
        "on its verb that name or number something else, 'When was the chapel built?' for '... built by Methodist "
        "weavers?') is trained with it instead of its full question; the other views keep the full one. Default: "
        "every view (readers ask short; README 'Version 25'). Empty: full questions everywhere, as before version 25.",
    )
    distractors: bool = Field(
        False,
        description="Train, beside each pair whose answer is a name or a number, the nearest other name or number "
        "the pairs answer as a distractor: its token where it parts from the answer is pushed down (unlikelihood "
        "loss; never checked), against answering one fact of the document with another.",
    )
    recite_segments: bool = Field(
        True,
        description="Train the segment recitation samples beside the QA pairs. False: the QA pairs alone, for "
        "stage2_epochs (stage 1 is skipped; LIFT's later versions train on QA only); a document that gets no pairs "
        "then trains on its segments. With the rule generator, false learnt no faster and lost paraphrased recall "
        "(README, 'When to stop').",
    )
    stage1_epochs: int | None = Field(
        None, ge=0, description="Two-stage schedule: epochs on segments only before the QA pairs join. None: the profile's value."
    )
    stage2_epochs: int | None = Field(
        None, ge=0, description="Two-stage schedule: epochs on segments + QA pairs. None: the profile's value."
    )

    @model_validator(mode="after")
    def _something_to_train(self) -> "AuxQAConfig":
        if not self.recite_segments and self.generator == "none":
            raise ValueError("aux_qa.recite_segments=false trains the QA pairs alone, but aux_qa.generator='none' writes none")
        return self


class TrainConfig(_Base):
    """Optimisation of the adapter on the samples; the base model stays frozen."""

    epochs: int | None = Field(
        None,
        ge=1,
        description="At most this many passes over the samples (without auxiliary QA; with it, the aux_qa "
        "stage epochs). None: the profile's value.",
    )
    min_epochs: int | None = Field(
        None, ge=1, description="Never stop before this many epochs (counted over the whole schedule). None: the profile's value."
    )
    early_stop: bool | None = Field(
        None,
        description="Stop when the document is known: after each epoch from min_epochs on, teacher-forced "
        "forwards over the auxiliary QA pairs (packed rows, no generation) check which answers greedy decoding would "
        "reproduce; training ends once that share reaches stop_accuracy. None: the profile's value.",
    )
    stop_accuracy: float | None = Field(
        None, gt=0.0, le=1.0, description="Share of the QA pairs answered exactly that ends training (with early_stop). None: the profile's value."
    )
    check_reuses_training: bool = Field(
        True,
        description="The check after an epoch first forwards only the QA pairs that the epoch's own training "
        "forwards (teacher-forced, before each step's update) did not answer exactly, counting the others as known; "
        "only if that reaches stop_accuracy are the others forwarded too. A check that cannot pass costs a fraction "
        "of a full one, and every stop is the full check's (README 'When to stop').",
    )
    lr_schedule: Literal["constant", "cosine"] | None = Field(
        None, description="Learning rate over the schedule's maximum steps: constant, or cosine decay to 10%. None: the profile's value."
    )
    autocast: Literal["none", "bfloat16", "float16"] | None = Field(
        None,
        description="Mixed precision: run the forward and backward in this dtype over the model's weights "
        "(bfloat16 pays off on CPUs with AVX512-BF16/AMX and on GPUs). None: the profile's choice for the device.",
    )
    learning_rate: float | None = Field(None, gt=0, description="AdamW learning rate. None: the profile's value.")
    betas: tuple[float, float] = Field((0.9, 0.98), description="AdamW betas (paper: 0.9, 0.98).")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    max_grad_norm: float | None = Field(1.0, gt=0, description="Gradient clipping norm; null disables.")
    samples_per_step: int | None = Field(
        None,
        ge=1,
        description="Samples per optimiser update. Samples of one step share their context: it is computed "
        "once and each segment attends to it through a block mask. None: the profile's value.",
    )
    step_tokens: int | None = Field(
        None,
        ge=0,
        description="Reply tokens per optimiser update (the shared context not counted): a step takes samples "
        "sharing a context until this many; it replaces samples_per_step's count, so a step holds a few long "
        "segments or many short QA answers. 0: count samples only. None: samples_per_step x (segment_length + 8), "
        "as many tokens as samples_per_step segments.",
    )
    gradient_checkpointing: bool | None = Field(None, description="Recompute activations in backward. None: the profile's value.")
    seed: int = Field(0, description="Seed for adapter initialisation and sample order.")
    shuffle: bool = Field(True, description="Shuffle the sample order every epoch (seeded).")

    @field_validator("betas")
    @classmethod
    def _betas_in_range(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not all(0.0 <= b < 1.0 for b in v):
            raise ValueError(f"betas must lie in [0, 1), got {v}")
        return v


class LoraAdapterConfig(_Base):
    """LoRA through peft."""

    kind: Literal["lora"] = Field(
        "lora", description="Adapter kind: lora (peft) or gated_memory (the paper's Gated Memory)."
    )
    r: int | None = Field(None, ge=1, description="LoRA rank. None: the profile's value.")
    alpha: float | None = Field(None, gt=0, description="LoRA alpha (scale = alpha / r). None: 2·r.")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="LoRA dropout.")
    target_modules: list[str] | Literal["all-linear"] | None = Field(
        None, description="Modules to adapt: 'all-linear' or a list of names. None: the profile's value."
    )
    layer_share: float | None = Field(
        None,
        gt=0.0,
        le=1.0,
        description="Adapt only this share of the decoder layers, the top ones (1.0: every layer). The backward "
        "pass stops at the lowest adapted layer, so 0.5 computes about a third less per token. None: the profile's value.",
    )


class GatedMemoryAdapterConfig(_Base):
    """The paper's Gated Memory: a memory MLP and a gate per attention head (lift_ray.adapters.gated_memory)."""

    kind: Literal["gated_memory"] = Field(
        "gated_memory", description="Adapter kind: gated_memory (per-head memory + gate before o_proj)."
    )
    gate_hidden: int = Field(11, ge=1, description="Gated Memory: hidden size of each head's gate MLP (paper: 11).")
    memory_expansion: int = Field(
        2, ge=1, description="Gated Memory: hidden size of each head's memory MLP, in multiples of head_dim (paper: 2)."
    )
    gate_init: float = Field(
        0.05,
        gt=0.0,
        lt=1.0,
        description="Gated Memory: gate value of the untrained adapter, the share of each head's output "
        "taken from memory (paper: about 0.05).",
    )


def _adapter_kind(value: Any) -> str:
    # A plain Field(discriminator="kind") would reject `adapter: {r: 8}`; without a kind it is LoRA, the default.
    if isinstance(value, dict):
        return value.get("kind", "lora")
    return getattr(value, "kind", "lora")


AdapterConfig = Annotated[
    Union[Annotated[LoraAdapterConfig, Tag("lora")], Annotated[GatedMemoryAdapterConfig, Tag("gated_memory")]],
    Discriminator(_adapter_kind),
]
_ADAPTER_CONFIG = TypeAdapter(AdapterConfig)


ADAPTER_KINDS = tuple(cls.model_fields["kind"].default for cls in (LoraAdapterConfig, GatedMemoryAdapterConfig))
QA_GENERATORS = get_args(QAGeneratorKind)


def parse_adapter_config(data: dict[str, Any]) -> LoraAdapterConfig | GatedMemoryAdapterConfig:
    """The adapter config of the kind named by ``data["kind"]`` (e.g. from a stored manifest).

    Raises:
        ConfigError: unknown kind or invalid fields, named in one line.
    """
    try:
        return _ADAPTER_CONFIG.validate_python(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, "adapter config")) from None


class InferenceConfig(_Base):
    """How questions are answered."""

    mode: Mode = Field(
        DEFAULT_MODE,
        description="icl: base + head…tail view; lift: adapter only; lift+icl: both; rag: base + retrieved chunks; lift+rag: adapter + retrieved chunks.",
    )
    max_new_tokens: int = Field(64, ge=1, le=8192, description="Maximum tokens generated per answer.")
    icl_when_in_window: bool = Field(
        False,
        description="In lift+icl and lift+rag, a question whose evidence the head…tail view shows (by BM25: see "
        "in_window_score_ratio) is answered as icl: the base model reads the view, without the adapter, whose "
        "memory can override text the window holds (README 'Reading the window'). The answer's answered_as says so. "
        "Off by default: on the documents written after it was chosen it was a wash.",
    )
    in_window_score_ratio: float = Field(
        2.0, gt=0,
        description="With icl_when_in_window: the best BM25 chunk the view shows (half of it or more) must score at "
        "least this many times every chunk it leaves out (a question in other words matches only common words).",
    )
    rag_when_unsupported: bool = Field(
        True,
        description="In lift+rag, the adapter's answer is kept only when the retrieved chunks back it (its words stand in a "
        "sentence about the question, rag_support_share), or, for an answer the chunks do not hold, the document does "
        "(a sentence of it about the question holds the answer); "
        "otherwise the question is answered as rag: the base model reads the same chunks, without the adapter, "
        "whose memory names another fact of the document as often as the right one (README 'Checking the adapter's "
        "answer'). Not when retrieval matched only words common in the document (a question in other words): "
        "there the adapter's memory stands. The answer's answered_as says so.",
    )
    rag_support_share: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="With rag_when_unsupported: the sentence of the retrieved chunks that holds the adapter's answer "
        "must hold at least this share of the question-word weight (BM25 idf) of the chunks' best-matching sentence "
        "(for an answer the chunks lack: the document's sentence, against the document's best-matching one), "
        "and the answer must have a word the question lacks; else it is answered as rag. 0 checks only that the "
        "answer's words are in the chunks (or the document) and add to the question.",
    )
    sure_answer_probability: float | None = Field(
        None,
        gt=0.0,
        le=1.0,
        description="With rag_when_unsupported, under greedy decoding: an adapter's answer the chunks do not back "
        "stands all the same when every token of it (its end included) had at least this probability, i.e. the "
        "adapter is sure of it (a fact it learnt whose sentence retrieval missed or words differently); its "
        "unsure answers still go to rag. null (the default): every answer the chunks do not back goes to rag; "
        "0.9 won 6 answers on the runs it was chosen on and lost 2 on unread documents (README 'An answer the "
        "adapter is sure of').",
    )
    do_sample: bool = Field(False, description="Sample instead of greedy decoding.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature (with do_sample).")
    top_p: float = Field(1.0, gt=0, le=1.0, description="Nucleus sampling mass (with do_sample).")
    question_reserve: int = Field(
        256, ge=16, description="Tokens reserved for the prompt wrapper and the question beside the W-token view."
    )
    answer_prompt: str = Field(
        "Answer the question based on the context above. Question: {question}",
        description="Question wording in icl and lift+icl modes ({question} is replaced).",
    )
    lift_prompt: str = Field(
        "Answer the question about the document. Question: {question}",
        description="Question wording in lift mode (no document in the prompt).",
    )

    @field_validator("answer_prompt", "lift_prompt")
    @classmethod
    def _has_question_slot(cls, v: str) -> str:
        if "{question}" not in v:
            raise ValueError("must contain the placeholder {question}")
        return v


class RetrievalConfig(_Base):
    """The retrieval view of modes rag and lift+rag (lift_ray.retrieval): BM25 over document chunks."""

    chunk_tokens: int = Field(32, ge=8, description="Tokens per chunk; a chunk ends at a sentence end in its second half where there is one.")
    overlap_tokens: int = Field(8, ge=0, description="Tokens shared by consecutive chunks.")
    head_tail_share: float = Field(
        0.0, ge=0.0, lt=1.0,
        description="Share of W kept for the document's head and tail around the retrieved chunks (0: chunks only).",
    )
    focus_sentence: bool = Field(
        True,
        description="Repeat the document's sentence that best matches the question (idf of the question's words) after "
        "the chunks, next to the question; the chunks get the rest of W. A 135M model reads what is nearest the question best.",
    )

    @model_validator(mode="after")
    def _overlap_below_chunk(self) -> "RetrievalConfig":
        if self.overlap_tokens >= self.chunk_tokens:
            raise ValueError(f"retrieval.overlap_tokens={self.overlap_tokens} must be below retrieval.chunk_tokens={self.chunk_tokens}")
        return self


class StoreConfig(_Base):
    """Where documents and adapters live."""

    uri: str | None = Field(None, description="Store URI or path. None: $LIFT_RAY_STORE or <cache>/store.")


class BulkConfig(_Base):
    """Bulk absorption on Ray (``lift-ray bulk``): how many workers and what each holds."""

    workers: int = Field(1, ge=1, description="Ray Train workers; each loads the base model once and absorbs documents one after another.")
    cpus_per_worker: float = Field(1.0, gt=0, description="Ray CPUs reserved per worker.")
    gpus_per_worker: float = Field(
        0.0, ge=0, description="GPUs per worker; a fraction (e.g. 0.25) packs several small-model workers onto one GPU."
    )
    threads_per_worker: int | None = Field(None, ge=1, description="torch CPU threads per worker. None: cpus_per_worker, at least 1.")
    max_failures: int = Field(
        3, ge=-1, description="Worker-group restarts after a worker dies (-1: unlimited); in-flight documents go back to the queue."
    )

    @model_validator(mode="after")
    def _whole_gpus_or_fraction(self) -> "BulkConfig":
        if self.gpus_per_worker > 1 and not float(self.gpus_per_worker).is_integer():
            raise ValueError(f"bulk.gpus_per_worker={self.gpus_per_worker}: above 1 it must be a whole number")
        return self


class LiftConfig(_Base):
    """Everything one absorb or ask needs."""

    profile: Profile = Field("auto", description="Default set: 'small' (<1B params), 'large', or 'auto' by size.")
    model: ModelSpec = Field(default_factory=ModelSpec)
    segments: SegmentConfig = Field(default_factory=SegmentConfig)
    aux_qa: AuxQAConfig = Field(default_factory=AuxQAConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    adapter: AdapterConfig = Field(default_factory=LoraAdapterConfig)
    inference: InferenceConfig = Field(default_factory=InferenceConfig)
    retrieval: RetrievalConfig = Field(default_factory=RetrievalConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    bulk: BulkConfig = Field(default_factory=BulkConfig)

    @model_validator(mode="after")
    def _segment_fits_window(self) -> "LiftConfig":
        w, seg = self.segments.context_window, self.segments.segment_length
        if w is not None and seg is not None and seg > 4 * w:
            raise ValueError(f"segments.segment_length={seg} is more than 4x segments.context_window={w}")
        return self

    # --- YAML ------------------------------------------------------------------------------
    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> "LiftConfig":
        return cls.model_validate(load_yaml_dict(path))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    def training_hash(self) -> str:
        """Hash of everything that changes the trained adapter (not inference or store settings)."""
        payload = {
            "segments": self.segments.model_dump(mode="json", exclude={"max_document_chars"}),
            # recite_segments, distractors off and an empty short_question_views are left out, so adapters absorbed
            # before those fields existed (full questions everywhere) keep their variant.
            "aux_qa": self.aux_qa.model_dump(mode="json", exclude={
                *(["recite_segments"] if self.aux_qa.recite_segments else []),
                *([] if self.aux_qa.distractors else ["distractors"]),
                *([] if self.aux_qa.short_question_views else ["short_question_views"]),
            }),
            "answer_prompt": self.inference.answer_prompt,  # QA samples are trained in this format
            # check_reuses_training changes what a check costs, never a stop decision, so never the adapter
            "train": self.train.model_dump(mode="json", exclude={"check_reuses_training"}),
            # layer_share is left out at 1.0 (every layer), so adapters absorbed before it existed keep their variant.
            "adapter": self.adapter.model_dump(
                mode="json", exclude={"layer_share"} if getattr(self.adapter, "layer_share", None) in (None, 1.0) else None
            ),
        }
        if "retrieved" in (self.aux_qa.views or []):
            # pairs trained in the retrieved view see the chunks this index picks; only then does it change the adapter
            payload["retrieval"] = self.retrieval.model_dump(mode="json")
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


class ServeConfig(_Base):
    """The Serve application (``lift-ray serve``, ``serve run lift_ray.serve:app_builder key=value ...``)."""

    store: str | None = Field(None, description="Store URI or path the app answers from. None: $LIFT_RAY_STORE or <cache>/store.")
    model: str | None = Field(None, description="Base model (model.name_or_path). None: the config's, else the embedded SmolLM2.")
    config: str | None = Field(None, description="LiftConfig YAML file (model, inference and absorb settings); store and model above override it.")
    overrides: dict[str, Any] = Field(default_factory=dict, description="LiftConfig fields laid over the YAML, as a nested mapping.")
    host: str = Field("127.0.0.1", description="HTTP bind address (used by `lift-ray serve`; Serve config YAMLs set http_options).")
    port: int = Field(8000, ge=0, le=65535, description="HTTP port (used by `lift-ray serve`).")
    replicas: int = Field(1, ge=1, description="Model replicas; each holds the base model once.")
    adapters_per_replica: int = Field(4, ge=1, description="K: documents' adapters kept resident per replica (Serve's multiplexing LRU).")
    max_batch_size: int = Field(8, ge=1, description="Questions about any documents answered in one batched generate.")
    batch_wait_timeout_s: float = Field(0.02, ge=0, description="How long a replica waits to fill a batch.")
    max_ongoing_requests: int = Field(16, ge=1, description="Requests one model replica works on at once (beyond: queued).")
    max_queued_requests: int = Field(32, ge=-1, description="Requests waiting for a model replica before 503 + Retry-After (-1: unbounded).")
    cpus_per_replica: float = Field(1.0, ge=0, description="Ray CPUs reserved per model replica.")
    gpus_per_replica: float = Field(0.0, ge=0, description="GPUs per model replica (a fraction packs several onto one GPU).")
    threads: int | None = Field(None, ge=1, description="torch threads per model replica. None: cpus_per_replica, at least 1.")
    absorb_cpus: float = Field(1.0, ge=0, description="Ray CPUs of the actor that absorbs POSTed documents (outside the serving replicas).")
    absorb_gpus: float = Field(0.0, ge=0, description="GPUs of the absorbing actor.")
    api_key_env: str | None = Field(None, description="Name of an environment variable holding the bearer key clients must send. None: no auth.")
    max_request_bytes: int = Field(8_000_000, ge=1024, description="Largest request body accepted (413 beyond).")
    manifest_ttl_s: float = Field(2.0, ge=0, description="Seconds a replica trusts a cached manifest; deletes and new documents show within this time.")
    name: str = Field("lift-ray", description="Serve application name (also names the absorbing actor).")

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, v: str | None) -> str | None:
        if v is not None and not v.replace("_", "A").isalnum():
            raise ValueError(f"{v!r} is not an environment variable name")
        return v

    def lift_config(self) -> "LiftConfig":
        """The LiftConfig the replicas and the absorbing actor use (YAML < overrides < store/model)."""
        top: dict[str, Any] = {}
        if self.store:
            top["store"] = {"uri": self.store}
        if self.model:
            top["model"] = {"name_or_path": self.model}
        return build_config(self.config, deep_merge(self.overrides, top))


# Profile defaults. "large" follows the paper (LIFT reference, Llama-3-8B); "small" is what measured
# best on the embedded SmolLM2-135M beyond-window fact test (README, "Choosing the defaults").
PROFILES: dict[str, dict[str, Any]] = {
    "large": {
        "model": {"dtype": "bfloat16", "load_in_4bit": {"cpu": False, "cuda": True}},
        "segments": {"segment_length_cap": 2048},
        "aux_qa": {"generator": "llm", "stage1_epochs": 3, "stage2_epochs": 5, "views": ["head_tail"]},
        "train": {
            "epochs": 8,
            "learning_rate": {"lora": 2e-4, "gated_memory": 1e-3},
            "samples_per_step": 1,
            "gradient_checkpointing": True,
            "min_epochs": 4,  # stage 1 (3 epochs) + at least one with the QA pairs
            "early_stop": True,
            "stop_accuracy": 0.9,
            "lr_schedule": "constant",
            "autocast": "none",
        },
        "adapter": {"r": 128, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"], "layer_share": 1.0},
    },
    "small": {
        # bf16 on this CPU (AVX512-BF16, AMX) measured no faster than fp32 per token (README, Benchmarks).
        "model": {"dtype": {"cpu": "float32", "cuda": "bfloat16"}, "load_in_4bit": False},
        "segments": {"segment_length_cap": 2048},
        # Chosen on the development set (README "Choosing the defaults"): QA pairs with the segments
        # from the first epoch, each pair trained with the head…tail view and without any (the latter
        # keeps lift+icl reading its window), stopping once 95% of the pairs are known.
        "aux_qa": {"generator": "rules", "stage1_epochs": 0, "stage2_epochs": 8, "views": ["head_tail", "none"]},
        "train": {
            "epochs": 8,
            "learning_rate": {"lora": 1e-3, "gated_memory": 1e-3},
            "samples_per_step": 4,
            "step_tokens": None,  # 4 segments' worth of reply tokens per step
            "gradient_checkpointing": False,
            "min_epochs": 3,
            "early_stop": True,
            "stop_accuracy": 0.95,
            "lr_schedule": "constant",
            "autocast": "none",
        },
        "adapter": {"r": 16, "target_modules": "all-linear", "layer_share": 1.0},
    },
}
SMALL_MODEL_MAX_PARAMS = 1_000_000_000


def pick_profile(requested: Profile, num_params: int) -> str:
    if requested != "auto":
        return requested
    return "small" if num_params < SMALL_MODEL_MAX_PARAMS else "large"


def resolve_config(
    cfg: LiftConfig, *, num_params: int, max_positions: int, on_cuda: bool
) -> LiftConfig:
    """Fill every profile-dependent ``None`` and derive the token budgets.

    Raises:
        ConfigError: when the budgets cannot fit the model's positions.
    """
    profile = PROFILES[pick_profile(cfg.profile, num_params)]
    data = cfg.model_dump()
    # The profile's adapter keys are LoRA's; other kinds have no size-dependent fields.
    sections = ("model", "segments", "aux_qa", "train")
    sections += ("adapter",) if cfg.adapter.kind == "lora" else ()
    for section in sections:
        for key, value in profile[section].items():
            if key not in data[section]:  # derived below (segment_length_cap)
                continue
            if isinstance(value, dict):  # a per-device or per-adapter-kind choice
                value = value.get(cfg.adapter.kind, value.get("cuda" if on_cuda else "cpu"))
            if data[section].get(key) is None:
                data[section][key] = value
    if cfg.adapter.kind == "lora" and data["adapter"]["alpha"] is None:
        data["adapter"]["alpha"] = 2.0 * data["adapter"]["r"]

    seg, inf = data["segments"], data["inference"]
    answer_budget = inf["question_reserve"] + inf["max_new_tokens"]
    if seg["context_window"] is None:
        seg["context_window"] = max_positions - answer_budget
    if seg["context_window"] + answer_budget > max_positions:
        raise ConfigError(
            f"segments.context_window={seg['context_window']} plus inference.question_reserve="
            f"{inf['question_reserve']} and inference.max_new_tokens={inf['max_new_tokens']} exceeds the "
            f"model's {max_positions} positions"
        )
    if seg["context_window"] < 16:
        raise ConfigError(f"the model's {max_positions} positions leave no room for a context window")
    if seg["segment_length"] is None:
        seg["segment_length"] = min(seg["context_window"], profile["segments"]["segment_length_cap"])
    train = data["train"]
    if train["step_tokens"] is None:
        train["step_tokens"] = train["samples_per_step"] * (seg["segment_length"] + 8)
    if seg["segment_length"] + 64 > max_positions:
        raise ConfigError(
            f"segments.segment_length={seg['segment_length']} does not fit the model's {max_positions} positions"
        )
    data["profile"] = pick_profile(cfg.profile, num_params)
    return LiftConfig.model_validate(data)


# --- YAML and overrides --------------------------------------------------------------------------


def load_yaml_dict(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML mapping, with errors that name the file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"malformed YAML in {p}: {' '.join(str(exc).split())}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {p} is not UTF-8 text") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping at the top level, got {type(data).__name__}")
    return data


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def build_config(yaml_path: str | None = None, overrides: dict[str, Any] | None = None) -> LiftConfig:
    """YAML file (optional) overlaid with CLI overrides, validated.

    Raises:
        ConfigError: one line naming the field and the problem.
    """
    data = load_yaml_dict(yaml_path) if yaml_path else {}
    data = deep_merge(data, overrides or {})
    try:
        return LiftConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, yaml_path)) from None


def format_validation_error(exc: ValidationError, source: str | None = None) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "config"
        parts.append(f"{loc}: {err['msg']}")
    where = f" in {source}" if source else ""
    return f"invalid configuration{where}: " + "; ".join(parts)


def cache_dir() -> Path:
    """Root of lift-ray's cache: $LIFT_RAY_CACHE or ~/.cache/lift-ray (not created here)."""
    return Path(os.environ.get("LIFT_RAY_CACHE") or Path.home() / ".cache" / "lift-ray")


def default_store_uri() -> str:
    return os.environ.get("LIFT_RAY_STORE") or str(cache_dir() / "store")


def reference_markdown() -> str:
    """The README's config reference, generated from the field descriptions (a test keeps it in sync)."""
    sections = [
        ("model", ModelSpec),
        ("segments", SegmentConfig),
        ("aux_qa", AuxQAConfig),
        ("train", TrainConfig),
        ("adapter", LoraAdapterConfig),
        ("adapter", GatedMemoryAdapterConfig),
        ("inference", InferenceConfig),
        ("retrieval", RetrievalConfig),
        ("store", StoreConfig),
        ("bulk", BulkConfig),
    ]
    lines = ["| key | default | meaning |", "|---|---|---|", f"| `profile` | `auto` | {LiftConfig.model_fields['profile'].description} |"]
    for name, model in sections:
        for field, info in model.model_fields.items():
            if model is GatedMemoryAdapterConfig and field == "kind":  # one `adapter.kind` row, LoRA's, names both
                continue
            default = info.get_default(call_default_factory=True)
            shown = "profile" if default is None and "profile" in (info.description or "") else json.dumps(default, ensure_ascii=False)
            lines.append(f"| `{name}.{field}` | `{shown}` | {(info.description or '').replace('|', '/')} |")
    return "\n".join(lines)
