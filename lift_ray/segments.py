"""Overlapping segmentation and contextualised training samples (LIFT paper §3.1 and §3.3).

A document of N tokens is cut into segments of ℓ tokens whose starts are s = round(f·ℓ) apart
(f = 3/8 in the paper), the last segment aligned to the end, so every token is covered and sits
in several positions. Each segment becomes one SFT conversation:

    user:      <head of document> ... <tail of document>  (≤ C tokens)  + recite prompt
    assistant: <segment tokens>

with the loss on the assistant tokens only. The truncated view is the same head+tail view the
model sees at inference in icl / lift+icl mode, so training and test formats agree.

Samples keep the length of their shared prefix (the part every sample of its kind has, e.g. the
context): samples with the same prefix are grouped into one training step, packed into one sequence
as a token tree in which every prompt token they share is computed once (see :func:`pack_groups`).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np
import torch

from lift_ray.text import normalize_text  # noqa: F401  (the hashed normal form; re-exported for callers of segments)

IGNORE_INDEX = -100


# --- chat format -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ChatFormat:
    """Token pieces that wrap one user message and one assistant reply in the model's chat template."""

    user_start: tuple[int, ...]  # before the user content (system prompt, role header, BOS)
    reply_start: tuple[int, ...]  # after the user content, up to where the reply begins
    reply_end: tuple[int, ...]  # closes the reply (end-of-turn / EOS); trained as part of the target


def chat_format(tokenizer) -> ChatFormat:
    """Read the pieces off the tokenizer's chat template; plain text with EOS when there is none."""
    enc = lambda s: tuple(tokenizer(s, add_special_tokens=False)["input_ids"]) if s else ()  # noqa: E731
    eos = (tokenizer.eos_token_id,) if tokenizer.eos_token_id is not None else ()
    if not getattr(tokenizer, "chat_template", None):
        bos = (tokenizer.bos_token_id,) if tokenizer.bos_token_id is not None else ()
        return ChatFormat(bos, enc("\n\n"), eos)
    user, reply = "\x00USER\x00", "\x00REPLY\x00"
    full = tokenizer.apply_chat_template(
        [{"role": "user", "content": user}, {"role": "assistant", "content": reply}], tokenize=False
    )
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True
    )
    before, after = prompt.split(user)
    _, rest = full.split(user)
    between, end = rest.split(reply)
    if not between.startswith(after):
        # Templates that render the reply header differently from the generation prompt: trust the latter.
        between = after
    end_ids = enc(end)
    if eos and eos[0] in end_ids:  # stop the target at the EOS; what follows (a newline) is not generated
        end_ids = end_ids[: end_ids.index(eos[0]) + 1]
    elif not end_ids:
        end_ids = eos
    return ChatFormat(enc(before), enc(after), end_ids)


# --- segmentation and truncation --------------------------------------------------------------


def segment_spans(n_tokens: int, length: int, stride: int) -> list[tuple[int, int]]:
    """Half-open [start, end) spans of ``length`` tokens every ``stride`` tokens; the last ends at n."""
    if length < 1 or stride < 1:
        raise ValueError(f"length and stride must be positive, got {length}, {stride}")
    if n_tokens <= length:
        return [(0, n_tokens)] if n_tokens else []
    starts = list(range(0, n_tokens - length + 1, stride))
    if starts[-1] + length < n_tokens:
        starts.append(n_tokens - length)
    return [(s, s + length) for s in starts]


def stride_for(length: int, fraction: float) -> int:
    return max(1, round(length * fraction))


def truncate_middle(ids: list[int], budget: int, mixin: list[int]) -> list[int]:
    """Head + mixin + tail of ``ids`` in at most ``budget`` tokens (all of ``ids`` if it fits)."""
    if len(ids) <= budget:
        return list(ids)
    head, tail = head_tail_sizes(budget, len(mixin))
    return list(ids[:head]) + list(mixin) + list(ids[len(ids) - tail :])


def head_tail_sizes(budget: int, mixin_len: int) -> tuple[int, int]:
    """Tokens of the document's head and tail that :func:`truncate_middle` keeps around a mixin of ``mixin_len``."""
    keep = budget - mixin_len
    if keep < 2:
        raise ValueError(f"a budget of {budget} tokens cannot hold the mixin of {mixin_len} tokens")
    return keep // 2, keep - keep // 2


# --- samples ----------------------------------------------------------------------------------


@dataclasses.dataclass
class Sample:
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX outside the target
    prefix_len: int  # tokens before the reply; equal prefixes can share computation
    kind: str = "segment"
    # a distractor: its target is a token the model should NOT predict there (unlikelihood, see
    # :func:`lift_ray.train.packed_loss`); never counted by the knowledge check
    negative: bool = False

    @property
    def num_target_tokens(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE_INDEX)


def question_content(tokenizer, view: list[int], question: str, answer_prompt: str) -> list[int]:
    """The user turn of a question asked over a view of the document: the view, a blank line, the
    question in ``answer_prompt``'s wording. Training QA samples and answering both build it here,
    so the format an adapter learnt is the format it is asked in."""
    asked = tokenizer("\n\n" + answer_prompt.format(question=question.strip()), add_special_tokens=False)["input_ids"]
    return [*view, *asked]


def build_prompt_ids(fmt: ChatFormat, user_content: list[int]) -> list[int]:
    """A full generation prompt: chat wrapper around the user content, ready for the reply."""
    return [*fmt.user_start, *user_content, *fmt.reply_start]


def build_sample(fmt: ChatFormat, user_content: list[int], reply: list[int], kind: str) -> Sample:
    prefix = build_prompt_ids(fmt, user_content)
    target = [*reply, *fmt.reply_end]
    return Sample(prefix + target, [IGNORE_INDEX] * len(prefix) + target, len(prefix), kind)


@dataclasses.dataclass
class Budgets:
    """Token budgets of one absorb, derived from W, ℓ and the model's positions."""

    context_window: int  # W: the head+tail view at inference
    train_context: int  # C ≤ W: the head+tail view inside training samples
    segment_length: int  # ℓ
    stride: int
    max_positions: int


def compute_budgets(
    *, context_window: int, segment_length: int, stride_fraction: float, max_positions: int, overhead: int
) -> Budgets:
    """C = min(W, positions - ℓ - overhead) so that context + prompt + segment always fits.

    Raises:
        ValueError: when the segment and wrapper alone do not fit the model's positions.
    """
    room = max_positions - segment_length - overhead
    if room < 0:
        raise ValueError(
            f"segment_length={segment_length} plus {overhead} prompt tokens exceeds the model's {max_positions} positions"
        )
    return Budgets(
        context_window=context_window,
        train_context=min(context_window, room),
        segment_length=segment_length,
        stride=stride_for(segment_length, stride_fraction),
        max_positions=max_positions,
    )


def segment_samples(
    doc_ids: list[int],
    *,
    fmt: ChatFormat,
    tokenizer,
    context_window: int,
    segment_length: int,
    stride_fraction: float,
    max_positions: int,
    recite_prompt: str,
    mixin: str,
) -> tuple[list[Sample], Budgets]:
    """Contextualised recitation samples for every segment of the document."""
    prompt_ids = tokenizer("\n\n" + recite_prompt, add_special_tokens=False)["input_ids"]
    mixin_ids = tokenizer(mixin, add_special_tokens=False)["input_ids"]
    overhead = len(fmt.user_start) + len(prompt_ids) + len(fmt.reply_start) + len(fmt.reply_end)
    budgets = compute_budgets(
        context_window=context_window,
        segment_length=segment_length,
        stride_fraction=stride_fraction,
        max_positions=max_positions,
        overhead=overhead,
    )
    context = truncate_middle(doc_ids, budgets.train_context, mixin_ids) if budgets.train_context > 0 else []
    spans = segment_spans(len(doc_ids), budgets.segment_length, budgets.stride)
    samples = [build_sample(fmt, context + prompt_ids, list(doc_ids[s:e]), "segment") for s, e in spans]
    return samples, budgets


# --- packing ----------------------------------------------------------------------------------


@dataclasses.dataclass
class PackedBatch:
    input_ids: torch.Tensor  # (1, T)
    labels: torch.Tensor  # (1, T)
    position_ids: torch.Tensor  # (1, T)
    attention_mask: torch.Tensor | None  # (1, 1, T, T) bool, True = may attend; None when plain causal
    logit_positions: torch.Tensor  # (n,) index of the token whose logits predict each target
    targets: torch.Tensor  # (n,) the target token ids
    num_tokens_unpacked: int  # what the same samples cost one by one
    negative: torch.Tensor | None = None  # (n,) bool: the target is a distractor's; None when none is

    def to(self, device) -> "PackedBatch":
        return dataclasses.replace(
            self,
            input_ids=self.input_ids.to(device),
            labels=self.labels.to(device),
            position_ids=self.position_ids.to(device),
            attention_mask=None if self.attention_mask is None else self.attention_mask.to(device),
            logit_positions=self.logit_positions.to(device),
            targets=self.targets.to(device),
            negative=None if self.negative is None else self.negative.to(device),
        )


# What a group's samples may share: every token before their first target, or only their prefix_len.
Shared = Literal["prompt", "prefix"]


def pack_shared_prefix(samples: list[Sample], shared: Shared = "prompt") -> PackedBatch:
    """One sequence holding the samples as a tree: the tokens they share computed once (see :func:`pack_groups`)."""
    return pack_groups([samples], shared)


def _shared_part(sample: Sample, shared: Shared) -> int:
    """How many leading tokens of ``sample`` may be shared with other samples of its group: everything
    before its first target ("prompt"), or only its ``prefix_len`` ("prefix", the packing before stop 43)."""
    first_target = next((i for i, label in enumerate(sample.labels) if label != IGNORE_INDEX), len(sample.labels))
    if shared == "prefix":
        if sample.prefix_len > first_target:
            raise ValueError("samples must have a non-empty prefix without targets")
        return sample.prefix_len
    if shared != "prompt":
        raise ValueError(f"shared must be 'prompt' or 'prefix', not {shared!r}")
    return first_target


@dataclasses.dataclass
class _Tree:
    """One group of samples as a token tree, flattened: parents before children."""

    ids: list[int] = dataclasses.field(default_factory=list)
    labels: list[int] = dataclasses.field(default_factory=list)
    positions: list[int] = dataclasses.field(default_factory=list)
    parents: list[int] = dataclasses.field(default_factory=list)  # the token each continues; -1 for the first
    logit_positions: list[int] = dataclasses.field(default_factory=list)  # the token predicting each target
    targets: list[int] = dataclasses.field(default_factory=list)
    negative: list[bool] = dataclasses.field(default_factory=list)

    def add(self, token: int, label: int, parent: int) -> int:
        self.ids.append(token)
        self.labels.append(label)
        self.positions.append(self.positions[parent] + 1 if parent >= 0 else 0)
        self.parents.append(parent)
        return len(self.ids) - 1


def _tree(samples: list[Sample], shared: Shared) -> _Tree:
    if shared == "prefix" and len({tuple(s.input_ids[: s.prefix_len]) for s in samples}) > 1:
        raise ValueError("shared='prefix' needs samples with identical prefixes")
    tree = _Tree()
    nodes: dict[tuple[int, int], int] = {}  # (parent, token id) -> index of the shared token
    for s in samples:
        k = _shared_part(s, shared)
        if k < 1:
            raise ValueError("samples must have a non-empty prefix without targets")
        at = -1
        for token in s.input_ids[:k]:
            node = nodes.get((at, token))
            if node is None:
                node = nodes[(at, token)] = tree.add(token, IGNORE_INDEX, at)
            at = node
        for token, label in zip(s.input_ids[k:], s.labels[k:]):
            if label != IGNORE_INDEX:  # predicted by the token before it, which may be shared
                tree.logit_positions.append(at)
                tree.targets.append(label)
                tree.negative.append(s.negative)
            at = tree.add(token, label, at)
    return tree


def pack_groups(groups: list[list[Sample]], shared: Shared = "prompt") -> PackedBatch:
    """Groups of samples in one sequence, each group a token tree (a trie of its samples' prompts).

    Within a group, the samples' prompts (every token before a sample's first target) are merged where
    they start alike: a shared token is computed once and attends only to its own ancestors, then each
    sample's reply follows as its own branch. Positions are depths in the tree, so every target gets
    the logits it would have with its sample run alone (a tree attention mask). So a step's samples
    share the document view, the prompt's wording and any question they begin alike ("Question:
    What"), not just the view. Groups see nothing of each other and their positions start at 0 (the
    knowledge check packs rows of many groups). ``shared="prefix"`` merges only each sample's
    ``prefix_len`` tokens and needs them identical within a group: the packing before stop 43, kept as
    ``benchmarks/packing.py``'s baseline.
    """
    trees = [_tree(samples, shared) for samples in groups]
    ids: list[int] = []
    labels: list[int] = []
    pos: list[int] = []
    parents: list[int] = []
    logit_positions: list[int] = []
    targets: list[int] = []
    negative: list[bool] = []
    for tree in trees:
        base = len(ids)
        ids += tree.ids
        labels += tree.labels
        pos += tree.positions
        parents += [p + base if p >= 0 else -1 for p in tree.parents]
        logit_positions += [i + base for i in tree.logit_positions]
        targets += tree.targets
        negative += tree.negative
    mask = None
    if len(groups) > 1 or len(groups[0]) > 1:
        # a token sees its ancestors and itself; parents come first, so one pass builds every row
        rows = np.zeros((len(ids), len(ids)), dtype=bool)
        for i, p in enumerate(parents):
            if p >= 0:
                rows[i] = rows[p]
            rows[i, i] = True
        mask = torch.from_numpy(rows)[None, None]
    return PackedBatch(
        input_ids=torch.tensor([ids]),
        labels=torch.tensor([labels]),
        position_ids=torch.tensor([pos]),
        attention_mask=mask,
        logit_positions=torch.tensor(logit_positions, dtype=torch.long),
        targets=torch.tensor(targets, dtype=torch.long),
        num_tokens_unpacked=sum(len(s.input_ids) for g in groups for s in g),
        negative=torch.tensor(negative, dtype=torch.bool) if any(negative) else None,
    )


def packed_length(samples: list[Sample], shared: Shared = "prompt") -> int:
    """Tokens of :func:`pack_shared_prefix` over ``samples``: the size of their tree."""
    return len(_tree(samples, shared).ids)


def group_for_packing(samples: list[Sample], per_step: int, max_tokens: int | None = None) -> list[list[Sample]]:
    """Steps of samples that share a prefix, in order of their first sample.

    A step holds at most ``per_step`` samples, or, with ``max_tokens``, as many as fit that many
    reply tokens (the shared prefix not counted; at least one sample): then a step costs about the
    same whether its replies are long segments or short answers, and many QA pairs share one
    computation of their context. Samples with different prefixes (e.g. recitation and QA samples)
    fill separate groups, so a shuffled order still packs fully.
    """
    groups: list[list[Sample]] = []
    open_groups: dict[tuple[int, ...], tuple[list[Sample], list[int]]] = {}  # prefix -> (group, [reply tokens])
    for s in samples:
        key = tuple(s.input_ids[: s.prefix_len])
        entry = open_groups.get(key)
        reply = len(s.input_ids) - s.prefix_len
        full = entry is not None and (
            entry[1][0] + reply > max_tokens if max_tokens is not None else len(entry[0]) >= per_step
        )
        if entry is None or full:
            entry = open_groups[key] = ([], [0])
            groups.append(entry[0])
        entry[0].append(s)
        entry[1][0] += reply
    return groups
