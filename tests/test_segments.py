import pytest
import torch

from conftest import make_tokenizer
from lift_ray.segments import (
    IGNORE_INDEX,
    build_prompt_ids,
    chat_format,
    compute_budgets,
    Sample,
    group_for_packing,
    normalize_text,
    pack_shared_prefix,
    segment_samples,
    segment_spans,
    stride_for,
    truncate_middle,
)


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


@pytest.mark.parametrize("n", [1, 7, 31, 32, 33, 100, 257, 1000])
@pytest.mark.parametrize("length", [8, 32, 128])
def test_spans_cover_every_token_with_configured_stride(n, length):
    stride = stride_for(length, 0.375)
    spans = segment_spans(n, length, stride)
    covered = set()
    for s, e in spans:
        assert 0 <= s < e <= n
        assert e - s == min(length, n)
        covered.update(range(s, e))
    assert covered == set(range(n))
    assert spans[-1][1] == n  # the last segment is aligned to the end
    starts = [s for s, _ in spans]
    # every step but (possibly) the last is exactly the stride; the last is shorter, never longer
    assert all(b - a == stride for a, b in zip(starts[:-2], starts[1:-1]))
    if len(starts) > 1:
        assert 0 < starts[-1] - starts[-2] <= stride
        # consecutive segments overlap by length - stride (5/8 of ℓ)
        assert spans[0][1] - spans[1][0] == length - (starts[1] - starts[0])


def test_paper_stride_is_three_eighths():
    assert stride_for(2048, 0.375) == 768
    assert stride_for(128, 0.375) == 48


def test_truncate_middle_keeps_head_and_tail_within_budget():
    ids = list(range(100))
    out = truncate_middle(ids, 20, [-1, -1])
    assert len(out) == 20
    assert out[:9] == list(range(9)) and out[9:11] == [-1, -1] and out[11:] == list(range(91, 100))
    assert truncate_middle(ids, 100, [-1]) == ids  # fits: unchanged
    with pytest.raises(ValueError):
        truncate_middle(ids, 2, [-1, -1])


def test_normalisation_is_canonical():
    a = "Cafe\u0301  \r\nline two\t \r\n\r\n"
    b = "Café\nline two"
    assert normalize_text(a) == normalize_text(b) == "Café\nline two"


def test_chat_format_matches_the_template(tok):
    fmt = chat_format(tok)
    user = tok("hello there", add_special_tokens=False)["input_ids"]
    ours = build_prompt_ids(fmt, user)
    theirs = tok.apply_chat_template([{"role": "user", "content": "hello there"}], add_generation_prompt=True)
    if not isinstance(theirs, list):
        theirs = theirs["input_ids"]
    assert ours == list(theirs)
    assert fmt.reply_end == (tok.eos_token_id,)


def _samples(tok, n_words=120, w=48, seg=32):
    text = " ".join(f"word{i}" for i in range(n_words))
    ids = tok(text, add_special_tokens=False)["input_ids"]
    samples, budgets = segment_samples(
        ids, fmt=chat_format(tok), tokenizer=tok, context_window=w, segment_length=seg,
        stride_fraction=0.375, max_positions=1024, recite_prompt="Recite.", mixin=" ... ",
    )
    return ids, samples, budgets


def test_labels_mask_everything_but_the_segment(tok):
    ids, samples, budgets = _samples(tok)
    fmt = chat_format(tok)
    spans = segment_spans(len(ids), budgets.segment_length, budgets.stride)
    assert len(samples) == len(spans)
    for sample, (s, e) in zip(samples, spans):
        target = [t for t in sample.labels if t != IGNORE_INDEX]
        assert target == ids[s:e] + list(fmt.reply_end)
        assert all(t == IGNORE_INDEX for t in sample.labels[: sample.prefix_len])
        assert sample.labels[sample.prefix_len :] == sample.input_ids[sample.prefix_len :]


@pytest.mark.parametrize("w,seg,positions", [(48, 32, 1024), (64, 64, 160), (200, 100, 256), (16, 8, 64)])
def test_budgets_are_never_exceeded(tok, w, seg, positions):
    text = " ".join(f"w{i}" for i in range(400))
    ids = tok(text, add_special_tokens=False)["input_ids"]
    samples, budgets = segment_samples(
        ids, fmt=chat_format(tok), tokenizer=tok, context_window=w, segment_length=seg,
        stride_fraction=0.375, max_positions=positions, recite_prompt="Recite the segment.", mixin=" ... ",
    )
    assert budgets.train_context <= w
    fmt = chat_format(tok)
    prompt_len = len(tok("\n\nRecite the segment.", add_special_tokens=False)["input_ids"])
    for s in samples:
        assert len(s.input_ids) <= positions
        context_len = s.prefix_len - len(fmt.user_start) - prompt_len - len(fmt.reply_start)
        assert context_len <= budgets.train_context <= w


def test_budget_error_when_segment_cannot_fit():
    with pytest.raises(ValueError, match="exceeds the model's 64 positions"):
        compute_budgets(context_window=32, segment_length=60, stride_fraction=0.375, max_positions=64, overhead=10)


def test_a_token_budget_packs_many_short_replies_per_step():
    """step_tokens: a step takes replies up to a token budget, so short QA answers share their context
    many to a step while long segments stay few; prefixes never mix."""
    def sample(prefix, reply_len):
        ids = list(prefix) + [7] * reply_len
        return Sample(ids, [IGNORE_INDEX] * len(prefix) + [7] * reply_len, len(prefix))

    segments = [sample([1, 2, 3], 20) for _ in range(5)]
    answers = [sample([4, 5], 5) for _ in range(9)]
    mixed = [x for pair in zip(segments, answers) for x in pair] + answers[5:]
    groups = group_for_packing(mixed, per_step=2, max_tokens=40)
    assert [len(g) for g in groups if g[0].prefix_len == 3] == [2, 2, 1]  # 20 + 20 = 40 fits, a third would not
    assert [len(g) for g in groups if g[0].prefix_len == 2] == [8, 1]  # per_step no longer counts
    assert all(len({tuple(s.input_ids[: s.prefix_len]) for s in g}) == 1 for g in groups)
    assert group_for_packing([sample([1], 50)], per_step=2, max_tokens=40) != []  # an oversize reply still trains
    assert [len(g) for g in group_for_packing(answers, per_step=4)] == [4, 4, 1]


def test_packing_groups_shared_prefixes(tok):
    _, samples, _ = _samples(tok)
    groups = group_for_packing(samples, 3)
    assert [len(g) for g in groups[:-1]] == [3] * (len(groups) - 1)
    assert sum(len(g) for g in groups) == len(samples)
    batch = pack_shared_prefix(groups[0])
    p = samples[0].prefix_len
    assert batch.input_ids.shape[1] == p + sum(len(s.input_ids) - p for s in groups[0])
    assert batch.num_tokens_unpacked == sum(len(s.input_ids) for s in groups[0])
    # each branch restarts its positions right after the prefix
    second = p + len(groups[0][0].input_ids) - p
    assert batch.position_ids[0, second].item() == p
    mask = batch.attention_mask[0, 0]
    assert not mask[second, second - 1]  # branch 2 cannot see branch 1
    assert mask[second, p - 1] and mask[second, second]
    assert torch.equal(mask[:p, :p], torch.ones(p, p, dtype=torch.bool).tril())
